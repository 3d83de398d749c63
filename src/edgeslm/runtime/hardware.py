"""What this machine offers: CPU model and features, RAM, GPUs with their memory, Metal, CUDA.

RAM comes from ``psutil`` when it is installed (correct on Linux, macOS and Windows); without it,
from each system's own source (``/proc/meminfo``, ``sysctl``/``vm_stat``, ``GlobalMemoryStatusEx``).
On Linux a container's cgroup memory limit caps both figures, since that is what the process gets.
The parsers are plain functions of the recorded text, so each system's path is tested anywhere.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field

__all__ = [
    "GPU",
    "Hardware",
    "cpu_identity",
    "cpu_info",
    "detect",
    "nvidia_gpus",
    "parse_cgroup_limit",
    "parse_meminfo",
    "parse_nvidia_smi",
    "parse_vm_stat",
    "ram",
    "windows_memory",
]

# CPU features that decide which kernels an engine can use (x86 and Arm).
CPU_FEATURES = frozenset({
    "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vnni", "avx512_bf16", "avx_vnni",
    "f16c", "fma", "sse4_2", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "sve", "sve2",
    "i8mm", "bf16",
})


@dataclass(frozen=True)
class GPU:
    """One GPU: its name, API and memory in bytes (total and free, 0 when unknown)."""

    name: str
    api: str
    memory_total: int
    memory_free: int
    cuda_version: str | None = None  # highest CUDA the driver supports (NVIDIA)


@dataclass(frozen=True)
class Hardware:
    """A snapshot of the machine, as :func:`detect` found it."""

    os: str
    arch: str
    cpu_count: int
    cpu_features: tuple[str, ...]
    ram_total: int
    ram_available: int
    gpus: tuple[GPU, ...] = field(default_factory=tuple)
    metal: bool = False
    cuda: bool = False
    llama_gpu_offload: bool | None = None
    cpu_model: str = ""

    @property
    def has_amx(self) -> bool:
        """Intel AMX tiles (Sapphire Rapids and later): llama.cpp's AMX kernels can run here."""
        return "amx_int8" in self.cpu_features or "amx_tile" in self.cpu_features

    def summary(self) -> str:
        gib = 1 << 30
        parts = [
            f"{self.os}/{self.arch}, {self.cpu_count} CPUs",
            f"RAM {self.ram_available / gib:.1f}/{self.ram_total / gib:.1f} GiB free",
        ]
        for g in self.gpus:
            parts.append(f"{g.api} {g.name} {g.memory_free / gib:.1f}/{g.memory_total / gib:.1f} GiB free")
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------- RAM


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) bytes from Linux ``/proc/meminfo``."""
    info: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            info[key.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    total = info.get("MemTotal", 0)
    if "MemAvailable" in info:
        avail = info["MemAvailable"]
    else:  # kernels before 3.14
        avail = info.get("MemFree", 0) + info.get("Cached", 0) + info.get("Buffers", 0)
    return total, min(avail, total)


def parse_cgroup_limit(max_text: str, current_text: str | None = None) -> tuple[int, int] | None:
    """A cgroup's (limit, still available) bytes from ``memory.max`` (v2) or ``memory.limit_in_bytes``
    (v1) and the matching usage file; None when unlimited."""
    raw = max_text.strip()
    if not raw or raw == "max" or not raw.isdigit():
        return None
    limit = int(raw)
    if limit >= 1 << 60:  # v1 writes a huge number for "no limit"
        return None
    used = int(current_text.strip()) if current_text and current_text.strip().isdigit() else 0
    return limit, max(0, limit - used)


def parse_vm_stat(vm_stat: str, memsize: int) -> tuple[int, int]:
    """(total, available) bytes on macOS from ``sysctl -n hw.memsize`` and ``vm_stat`` output.

    Available is what macOS can hand out without swapping: free, inactive, speculative and purgeable
    pages (the same sum psutil and Activity Monitor use)."""
    m = re.search(r"page size of (\d+) bytes", vm_stat)
    page = int(m.group(1)) if m else 4096
    pages: dict[str, int] = {}
    for line in vm_stat.splitlines():
        key, _, val = line.partition(":")
        val = val.strip().rstrip(".")
        if val.isdigit():
            pages[key.strip().strip('"')] = int(val)
    avail = sum(pages.get(f"Pages {k}", 0) for k in ("free", "speculative", "inactive", "purgeable")) * page
    return memsize, max(0, min(avail, memsize))


def windows_memory(status: object) -> tuple[int, int]:
    """(total, available) bytes from a Windows ``MEMORYSTATUSEX`` (``ullTotalPhys``, ``ullAvailPhys``)."""
    return int(getattr(status, "ullTotalPhys", 0)), int(getattr(status, "ullAvailPhys", 0))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def _linux_cgroup() -> tuple[int, int] | None:
    for mx, cur in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        text = _read(mx)
        if text is not None:
            return parse_cgroup_limit(text, _read(cur))
    return None


def _system_ram() -> tuple[int, int]:
    system = platform.system()
    if system == "Linux":
        text = _read("/proc/meminfo")
        if text:
            return parse_meminfo(text)
    elif system == "Darwin":
        try:
            memsize = int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True,
                                         timeout=5, check=True).stdout.strip())
            vm = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5, check=True).stdout
            return parse_vm_stat(vm, memsize)
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    elif system == "Windows":
        import ctypes

        class MEMORYSTATUSEX(ctypes.Structure):
            _fields_ = [
                ("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
            ]

        st = MEMORYSTATUSEX()
        st.dwLength = ctypes.sizeof(MEMORYSTATUSEX)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(st)):  # type: ignore[attr-defined]
            return windows_memory(st)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        return total, avail
    except (ValueError, OSError, AttributeError):
        return 0, 0


def ram() -> tuple[int, int]:
    """Total and available RAM in bytes; on Linux no more than the cgroup (container) allows."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        total, avail = int(vm.total), int(vm.available)
    except Exception:  # not installed, or an unsupported system
        total, avail = _system_ram()
    if platform.system() == "Linux":
        cg = _linux_cgroup()
        if cg is not None:
            total, avail = min(total, cg[0]), min(avail, cg[1])
    return total, avail


# ----------------------------------------------------------------------------------------- CPU


def cpu_info() -> tuple[str, tuple[str, ...]]:
    """(model name, the engine-relevant feature flags)."""
    text = _read("/proc/cpuinfo") or ""
    name = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and not name:
            name = val.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(val.split())
    if not name:
        name = platform.processor() or platform.machine()
        if platform.system() == "Darwin":
            try:
                name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                      text=True, timeout=5).stdout.strip() or name
            except (OSError, subprocess.SubprocessError):
                pass
    if not flags and platform.machine().lower() in ("arm64", "aarch64"):
        flags = {"neon", "asimd"}
    return name, tuple(sorted(CPU_FEATURES & flags))


def cpu_identity() -> str:
    """A string that changes when the CPU (model or any feature flag) changes: keys the engine self-check."""
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            name, _ = cpu_info()
            return f"{platform.machine()}|{name}|{' '.join(sorted(line.split(':', 1)[1].split()))}"
    name, feats = cpu_info()
    return f"{platform.system()}|{platform.machine()}|{name}|{' '.join(feats)}"


# ----------------------------------------------------------------------------------------- GPUs


def parse_nvidia_smi(csv: str, cuda_version: str | None = None) -> tuple[GPU, ...]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits``."""
    gpus = []
    for line in csv.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit():
            free = int(parts[2]) << 20 if parts[2].isdigit() else 0
            gpus.append(GPU(parts[0], "cuda", int(parts[1]) << 20, free, cuda_version))
    return tuple(gpus)


def nvidia_gpus() -> tuple[GPU, ...]:
    """The NVIDIA GPUs ``nvidia-smi`` reports, with their free memory (none without it)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        head = subprocess.run([exe], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    m = re.search(r"CUDA Version:\s*([0-9.]+)", head)
    return parse_nvidia_smi(out, m.group(1) if m else None)


def detect(*, probe_engine: bool = True) -> Hardware:
    """Look at this machine. With ``probe_engine`` it also asks the installed llama.cpp build
    (through the backend registry) whether it can offload layers to a GPU."""
    total, avail = ram()
    metal = platform.system() == "Darwin" and platform.machine() == "arm64"
    gpus = nvidia_gpus()
    if metal:
        gpus += (GPU("Apple Silicon", "metal", total, avail),)  # unified memory
    offload = None
    if probe_engine:
        try:
            from ..backends.registry import get_backend

            spec = get_backend("llama.cpp")
            offload = spec.gpu_supported() if spec.gpu_supported is not None and spec.available() else None
        except Exception:
            offload = None
    name, feats = cpu_info()
    return Hardware(
        os=platform.system(),
        arch=platform.machine(),
        cpu_count=os.cpu_count() or 1,
        cpu_features=feats,
        ram_total=total,
        ram_available=avail,
        gpus=gpus,
        metal=metal,
        cuda=any(g.api == "cuda" for g in gpus),
        llama_gpu_offload=offload,
        cpu_model=name,
    )
