"""What this machine offers: CPU features, RAM, GPUs with their memory, Metal, CUDA."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field

__all__ = ["GPU", "Hardware", "detect"]


@dataclass(frozen=True)
class GPU:
    """One GPU: its name, API and memory in bytes (total and free, 0 when unknown)."""

    name: str
    api: str
    memory_total: int
    memory_free: int


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

    def summary(self) -> str:
        gib = 1 << 30
        parts = [
            f"{self.os}/{self.arch}, {self.cpu_count} CPUs",
            f"RAM {self.ram_available / gib:.1f}/{self.ram_total / gib:.1f} GiB free",
        ]
        for g in self.gpus:
            parts.append(f"{g.api} {g.name} {g.memory_free / gib:.1f}/{g.memory_total / gib:.1f} GiB free")
        return ", ".join(parts)


def _ram() -> tuple[int, int]:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        return info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, total // 2
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _cpu_features() -> tuple[str, ...]:
    wanted = {"avx", "avx2", "avx512f", "avx512_vnni", "avx512vnni", "f16c", "fma", "sse4_2", "neon", "asimd",
              "amx_tile", "sve"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return tuple(sorted(wanted & set(line.split(":", 1)[1].split())))
    except OSError:
        pass
    if platform.machine() in ("arm64", "aarch64"):
        return ("neon",)
    return ()


def _nvidia_gpus() -> tuple[GPU, ...]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit():
            gpus.append(GPU(parts[0], "cuda", int(parts[1]) << 20, int(parts[2]) << 20 if parts[2].isdigit() else 0))
    return tuple(gpus)


def detect(*, probe_engine: bool = True) -> Hardware:
    """Look at this machine. With ``probe_engine`` it also asks llama.cpp whether it can offload."""
    total, avail = _ram()
    metal = platform.system() == "Darwin" and platform.machine() == "arm64"
    gpus = _nvidia_gpus()
    if metal:
        gpus += (GPU("Apple Silicon", "metal", total, avail),)  # unified memory
    offload = None
    if probe_engine:
        try:
            from ..backends.llamacpp import gpu_offload_supported

            offload = gpu_offload_supported()
        except Exception:
            offload = None
    return Hardware(
        os=platform.system(),
        arch=platform.machine(),
        cpu_count=os.cpu_count() or 1,
        cpu_features=_cpu_features(),
        ram_total=total,
        ram_available=avail,
        gpus=gpus,
        metal=metal,
        cuda=any(g.api == "cuda" for g in gpus),
        llama_gpu_offload=offload,
    )
