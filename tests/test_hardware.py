"""Hardware detection on recorded outputs of each operating system's own source."""

from __future__ import annotations

import platform
from types import SimpleNamespace

import pytest

from edgeslm.runtime import hardware
from edgeslm.runtime.hardware import (
    parse_cgroup_limit,
    parse_meminfo,
    parse_nvidia_smi,
    parse_vm_stat,
    windows_memory,
)

KIB = 1024
GIB = 1 << 30

# Linux: /proc/meminfo of a 16 GB laptop (kernel 6.x)
MEMINFO = """MemTotal:       16131932 kB
MemFree:          882344 kB
MemAvailable:    9873420 kB
Buffers:          402192 kB
Cached:          8235780 kB
SwapCached:            0 kB
Active:          6107056 kB
"""
# Linux before 3.14: no MemAvailable
MEMINFO_OLD = """MemTotal:        2048000 kB
MemFree:          100000 kB
Buffers:           50000 kB
Cached:           400000 kB
"""
# macOS 14 on a 16 GB M2: `sysctl -n hw.memsize` and `vm_stat`
MEMSIZE = 17179869184
VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               23134.
Pages active:                            337513.
Pages inactive:                          329170.
Pages speculative:                         6112.
Pages throttled:                              0.
Pages wired down:                        155339.
Pages purgeable:                          10211.
"Translation faults":                 998102735.
Pages copy-on-write:                   21542871.
File-backed pages:                       262093.
Anonymous pages:                         410702.
Pages occupied by compressor:            117030.
"""


def test_linux_meminfo() -> None:
    assert parse_meminfo(MEMINFO) == (16131932 * KIB, 9873420 * KIB)
    assert parse_meminfo(MEMINFO_OLD) == (2048000 * KIB, 550000 * KIB)


def test_linux_cgroup_limit_caps_a_container() -> None:
    assert parse_cgroup_limit("max\n", "123") is None
    assert parse_cgroup_limit("9223372036854771712\n", "5") is None  # cgroup v1: "no limit"
    assert parse_cgroup_limit("4294967296\n", "1073741824\n") == (4 * GIB, 3 * GIB)
    assert parse_cgroup_limit("4294967296", None) == (4 * GIB, 4 * GIB)


def test_macos_vm_stat() -> None:
    total, avail = parse_vm_stat(VM_STAT, MEMSIZE)
    assert total == MEMSIZE
    assert avail == (23134 + 6112 + 329170 + 10211) * 16384  # free + speculative + inactive + purgeable
    assert 5 * GIB < avail < 7 * GIB


def test_windows_memorystatusex() -> None:
    status = SimpleNamespace(dwLength=64, dwMemoryLoad=41, ullTotalPhys=34267656192, ullAvailPhys=20146380800)
    assert windows_memory(status) == (34267656192, 20146380800)


def test_nvidia_smi() -> None:
    out = "NVIDIA GeForce RTX 3060, 6144, 5731\nNVIDIA H100 80GB HBM3, 81559, [N/A]\n"
    gpus = parse_nvidia_smi(out, "12.4")
    assert [g.name for g in gpus] == ["NVIDIA GeForce RTX 3060", "NVIDIA H100 80GB HBM3"]
    assert gpus[0].memory_total == 6144 << 20 and gpus[0].memory_free == 5731 << 20
    assert gpus[1].memory_free == 0 and gpus[1].cuda_version == "12.4"


def test_this_machine_agrees_with_its_own_source() -> None:
    hw = hardware.detect(probe_engine=False)
    assert hw.ram_total >= hw.ram_available > 0 and hw.cpu_count >= 1
    if platform.system() == "Linux":
        with open("/proc/meminfo") as f:
            total, _ = parse_meminfo(f.read())
        assert hw.ram_total <= total  # a cgroup limit can only lower it
        assert abs(hw.ram_total - total) < 0.01 * total or hw.ram_total < total
        flags = open("/proc/cpuinfo").read()
        assert hw.has_amx == ("amx_int8" in flags or "amx_tile" in flags)
    assert hw.cpu_model


def test_without_psutil_the_system_source_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_psutil(name, *a, **k):  # type: ignore[no-untyped-def]
        if name == "psutil":
            raise ImportError("no psutil")
        return real(name, *a, **k)

    with_psutil = hardware.ram()
    monkeypatch.setattr(builtins, "__import__", no_psutil)
    without = hardware.ram()
    assert without[0] > 0 and abs(without[0] - with_psutil[0]) <= 0.02 * with_psutil[0]
