"""The planner: which backend, device, GPU layers and context fit this machine, and why."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import BackendUnavailableError, ModelNotFoundError
from .hardware import Hardware, detect

__all__ = ["Plan", "plan_for_path"]

DEFAULT_CTX = 4096
GIB = 1 << 30


@dataclass
class Plan:
    """How a model will run. ``why`` explains each choice in plain words."""

    backend: str
    device: str
    n_gpu_layers: int
    n_ctx: int
    variant: str | None = None
    path: str | None = None
    est_memory_bytes: int = 0
    why: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"{self.backend} on {self.device}, n_ctx={self.n_ctx}, gpu_layers={self.n_gpu_layers}"
        if self.variant:
            head = f"{self.variant}: {head}"
        return head + "".join(f"\n  - {w}" for w in self.why)


def kv_bytes_estimate(n_ctx: int, size_bytes: int) -> int:
    """Rough KV-cache size: ~0.12 MiB per token for 7B-class models, scaled by model size."""
    per_token = max(16 * 1024, int(0.12 * (1 << 20) * min(1.0, size_bytes / (4.5 * GIB))))
    return per_token * n_ctx


def plan_for_path(
    path: Path,
    *,
    backend: str = "auto",
    device: str = "auto",
    n_ctx: int | None = None,
    n_gpu_layers: int | None = None,
    context_length: int | None = None,
    n_layers: int | None = None,
    hardware: Hardware | None = None,
) -> Plan:
    """Plan how to run the model at *path* (a ``.gguf`` file or an ONNX GenAI folder)."""
    why: list[str] = []
    is_onnx = path.is_dir() and (path / "genai_config.json").is_file()
    if path.is_dir() and not is_onnx:
        raise ModelNotFoundError(
            f"{path} is a folder without genai_config.json",
            hint="give a .gguf file, or an ONNX Runtime GenAI folder",
        )
    if backend == "auto":
        backend = "onnx" if is_onnx else "llama.cpp"
        why.append(f"{'ONNX GenAI folder' if is_onnx else 'GGUF file'} -> {backend} backend")
    elif backend == "onnx" and not is_onnx:
        raise BackendUnavailableError(f"{path} is not an ONNX GenAI folder", hint="use backend='llama.cpp'")
    elif backend == "llama.cpp" and is_onnx:
        raise BackendUnavailableError(f"{path} is an ONNX folder", hint="use backend='onnx'")
    size = _size(path)
    ctx = n_ctx or min(context_length or DEFAULT_CTX, DEFAULT_CTX)
    if n_ctx is None:
        why.append(f"context {ctx} tokens (default cap {DEFAULT_CTX}; pass n_ctx= for more)")
    hw = hardware
    layers = 0
    dev = "cpu"
    if device in ("auto", "cuda", "metal", "gpu") and backend == "llama.cpp":
        hw = hw or detect()
        gpu = max(hw.gpus, key=lambda g: g.memory_free, default=None)
        if not hw.llama_gpu_offload:
            if device != "auto":
                raise BackendUnavailableError(
                    f"device={device!r} asked for, but this llama-cpp-python build has no GPU offload",
                    hint='reinstall it with CMAKE_ARGS="-DGGML_CUDA=on" (or -DGGML_METAL=on) '
                    "pip install --force-reinstall --no-cache-dir llama-cpp-python",
                )
            why.append("llama.cpp build has no GPU offload -> CPU")
        elif gpu is None:
            if device != "auto":
                raise BackendUnavailableError(
                    f"device={device!r} asked for, but no GPU was found",
                    hint="use device='auto' or 'cpu'; `edgeslm doctor` shows what this machine offers",
                )
            why.append("no GPU found -> CPU")
        else:
            need = size + kv_bytes_estimate(ctx, size) + 512 * (1 << 20)
            free = gpu.memory_free or gpu.memory_total
            dev = gpu.api
            if n_gpu_layers is not None:
                layers = n_gpu_layers
                why.append(f"{layers} GPU layers as asked")
            elif need <= free * 0.9:
                layers = 999
                why.append(f"all layers on {gpu.name}: needs ~{need / GIB:.1f} GiB of {free / GIB:.1f} GiB free")
            else:
                frac = max(0.0, (free * 0.9 - 512 * (1 << 20)) / max(need, 1))
                depth = n_layers or 32
                layers = int(frac * depth)
                why.append(
                    f"partial offload: {layers}/{depth} layers (~{frac:.0%} of the model) fit in "
                    f"{free / GIB:.1f} GiB free on {gpu.name}"
                )
    elif device != "auto" and device != "cpu" and backend == "onnx":
        dev = device
    if dev == "cpu":
        layers = 0
        if device == "cpu":
            why.append("CPU as asked")
    return Plan(
        backend=backend, device=dev, n_gpu_layers=layers, n_ctx=ctx, path=os.fspath(path),
        est_memory_bytes=size + kv_bytes_estimate(ctx, size), why=why,
    )


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
