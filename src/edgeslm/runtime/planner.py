"""The planner: which backend, variant, device, GPU layers and context fit this machine, and why.

Memory comes from the model's shape: per-layer weight sizes, the rest (embeddings, output head)
and the KV cache per token, read by the engine from the file's header when the file is at hand (its spec's ``shape``),
else from the catalog. A plan always fits: what cannot run here (a context beyond what the model
was trained on, a model larger than the machine's RAM even with every layer it can on the GPU) is
refused with an error that says what would work, never planned as "expect swapping".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import BackendUnavailableError, InsufficientMemoryError, InvalidRequestError
from .hardware import GPU, Hardware, detect

__all__ = ["ModelShape", "Plan", "gpu_install_hint", "plan_catalog", "plan_for_path", "plan_variant"]

DEFAULT_CTX = 4096
GIB = 1 << 30
MIB = 1 << 20
CPU_OVERHEAD = 150 * MIB  # compute buffers and runtime on the CPU (plus 3 % of the weights)
GPU_OVERHEAD = 512 * MIB  # CUDA/Metal context and compute buffers
GPU_SHARE = 0.9  # of the free GPU memory a plan may use
METAL_SHARE = 0.7  # of unified memory macOS lets the GPU wire (recommendedMaxWorkingSetSize)
AVAILABLE_SHARE = 0.9  # of the available RAM a CPU plan uses comfortably
ALL_LAYERS = 999  # llama.cpp's "everything on the GPU"

GPU_ORDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q4_1", "IQ4_XS", "Q3_K_M")
CPU_ORDER = ("Q4_K_M", "Q4_0", "Q4_1", "Q5_K_M", "IQ4_XS", "Q6_K", "Q8_0", "Q3_K_M")
CACHED_NOTE = "is already in the local cache"


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
    gpu_memory_bytes: int = 0  # of est_memory_bytes, what sits on the GPU
    n_layers: int | None = None
    engine_check: Any = None  # the self-check's answer (runtime.selfcheck.EngineCheck) once loaded

    def __str__(self) -> str:
        head = f"{self.backend} on {self.device}, n_ctx={self.n_ctx}, gpu_layers={self.n_gpu_layers}"
        if self.variant:
            head = f"{self.variant}: {head}"
        return head + "".join(f"\n  - {w}" for w in self.why)


# ------------------------------------------------------------------------------------ model shape


@dataclass(frozen=True)
class ModelShape:
    """What decides a model's memory: weights per repeating layer, the rest, the KV cache per token."""

    n_layers: int
    layer_bytes: tuple[int, ...]
    other_bytes: int
    kv_bytes_per_token: int
    context_length: int | None = None
    source: str = "catalog"

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.other_bytes

    def total_bytes(self, n_ctx: int) -> int:
        """Everything on the CPU: weights, KV cache, runtime."""
        return int(self.weight_bytes * 1.03 + self.kv_bytes_per_token * n_ctx + CPU_OVERHEAD)

    def gpu_bytes(self, layers: int, n_ctx: int) -> int:
        """GPU memory for the first *layers* layers (all of them plus the output head at ``n_layers+1``)."""
        if layers <= 0:
            return 0
        n = min(layers, self.n_layers)
        kv_layer = self.kv_bytes_per_token * n_ctx // max(self.n_layers, 1)
        head = self.other_bytes if layers > self.n_layers else 0
        return int((sum(self.layer_bytes[:n]) + head) * 1.03 + kv_layer * n + GPU_OVERHEAD)

    def max_gpu_layers(self, budget: float, n_ctx: int) -> int:
        """The most layers whose GPU share fits *budget* (``n_layers + 1`` means everything)."""
        if self.gpu_bytes(self.n_layers + 1, n_ctx) <= budget:
            return self.n_layers + 1
        best = 0
        for n in range(1, self.n_layers + 1):
            if self.gpu_bytes(n, n_ctx) > budget:
                break
            best = n
        return best

    @classmethod
    def from_catalog(cls, entry: Any, variant: Any) -> ModelShape | None:
        """From the catalog: the variant's size split evenly over the layers (10 % for the rest)."""
        size = variant.total_size
        if size is None and variant.memory_estimate_bytes:
            size = int((variant.memory_estimate_bytes - entry.kv_bytes_per_token * DEFAULT_CTX - CPU_OVERHEAD) / 1.03)
        if not size:
            return None
        n = entry.n_layers or 32
        other = size // 10
        per = (size - other) // n
        return cls(n, (per,) * n, size - per * n, entry.kv_bytes_per_token, entry.context_length, "catalog")

# ------------------------------------------------------------------------------------ fitting


def gpu_install_hint(hw: Hardware) -> str | None:
    """The exact install line for a GPU build of llama-cpp-python, when this machine has a GPU that
    the installed build cannot use."""
    if hw.llama_gpu_offload or not hw.gpus:
        return None
    gpu = hw.gpus[0]
    if gpu.api == "metal":
        return ('CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir llama-cpp-python '
                "(or the prebuilt wheel: pip install llama-cpp-python --extra-index-url "
                "https://abetlen.github.io/llama-cpp-python/whl/metal)")
    cu = "cu124"
    if gpu.cuda_version:
        try:
            major, minor = (int(x) for x in gpu.cuda_version.split(".")[:2])
            if major == 12 and 1 <= minor < 4:
                cu = f"cu12{minor}"
        except ValueError:
            pass
    return (f'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python '
            f"(needs the CUDA toolkit; or a prebuilt CUDA wheel: pip install llama-cpp-python --extra-index-url "
            f"https://abetlen.github.io/llama-cpp-python/whl/{cu}); "
            "for ONNX models: pip install onnxruntime-genai-cuda")


def _gpu_budget(gpu: GPU, hw: Hardware) -> float:
    if gpu.api == "metal":
        return min(gpu.memory_free or hw.ram_available, gpu.memory_total * METAL_SHARE)
    return (gpu.memory_free or gpu.memory_total) * GPU_SHARE


@dataclass
class _Fit:
    device: str
    layers: int
    total: int
    gpu: int
    why: list[str]
    tight: bool = False  # fits the RAM total but not what is available now


def _fit(shape: ModelShape, hw: Hardware, n_ctx: int, *, use_gpu: bool, n_gpu_layers: int | None,
         label: str) -> _Fit | None:
    """How *shape* runs here, or None when it cannot (the reason is in the caller's words)."""
    total = shape.total_bytes(n_ctx)
    gpu = max(hw.gpus, key=lambda g: g.memory_free or g.memory_total, default=None) if use_gpu else None
    if gpu is not None:
        budget = _gpu_budget(gpu, hw)
        if n_gpu_layers is not None:
            layers = min(n_gpu_layers, shape.n_layers + 1)
            why = [f"{label}: {layers} GPU layers as asked"]
        else:
            layers = shape.max_gpu_layers(budget, n_ctx)
            why = []
        on_gpu = shape.gpu_bytes(layers, n_ctx)
        # What stays in RAM; with unified memory (Apple) the GPU's share comes out of the same RAM.
        ram_need = total if gpu.api == "metal" else max(total - (on_gpu - GPU_OVERHEAD), CPU_OVERHEAD)
        if layers > 0 and ram_need <= hw.ram_total:
            if n_gpu_layers is None:
                if layers > shape.n_layers:
                    why.append(f"{label}: all {shape.n_layers} layers on {gpu.name}: needs ~{on_gpu / GIB:.1f} GiB "
                               f"of {budget / GIB:.1f} GiB usable GPU memory")
                else:
                    why.append(f"{label}: partial offload, {layers}/{shape.n_layers} layers on {gpu.name} "
                               f"(~{on_gpu / GIB:.1f} of {budget / GIB:.1f} GiB usable; per-layer sizes from the "
                               f"{shape.source}), the rest on the CPU")
            return _Fit(gpu.api, ALL_LAYERS if layers > shape.n_layers else layers, total, on_gpu, why,
                        tight=ram_need > hw.ram_available * AVAILABLE_SHARE)
    if total > hw.ram_total:
        return None
    tight = total > hw.ram_available * AVAILABLE_SHARE
    note = (f" (only {hw.ram_available / GIB:.1f} GiB available now: close other programs first)" if tight else "")
    return _Fit("cpu", 0, total, 0, [f"{label}: CPU, needs ~{total / GIB:.1f} GiB of {hw.ram_total / GIB:.1f} GiB "
                                     f"RAM{note}"], tight=tight)


def _refuse(what: str, need: int, hw: Hardware, gpu_note: str) -> InsufficientMemoryError:
    return InsufficientMemoryError(
        f"{what} needs ~{need / GIB:.1f} GiB but this machine has {hw.ram_total / GIB:.1f} GiB of RAM"
        f"{gpu_note}: it cannot run here",
        hint="pick a smaller model or quantization (`edgeslm doctor` lists what runs here), or a shorter n_ctx=",
    )


def _check_ctx(n_ctx: int | None, trained: int | None, what: str) -> None:
    if n_ctx is not None and (not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx <= 0):
        raise InvalidRequestError(f"n_ctx must be a positive integer, got {n_ctx!r}", hint="e.g. n_ctx=4096")
    if n_ctx is not None and trained and n_ctx > trained:
        raise InvalidRequestError(
            f"n_ctx={n_ctx} is beyond the {trained} tokens {what} was trained on",
            hint=f"pass n_ctx={trained} or less (longer contexts give garbage and cost memory)",
        )


def _gpu_usable(hw: Hardware, device: str, why: list[str]) -> bool:
    gpu = max(hw.gpus, key=lambda g: g.memory_free or g.memory_total, default=None)
    if device == "cpu":
        why.append("CPU as asked")
        return False
    hint = gpu_install_hint(hw)
    if not hw.llama_gpu_offload:
        if device != "auto":
            raise BackendUnavailableError(
                f"device={device!r} asked for, but this llama-cpp-python build has no GPU offload",
                hint=f"install a GPU build: {hint}" if hint else "install a GPU build of llama-cpp-python",
            )
        why.append(f"this llama-cpp-python build cannot use the GPU; to use it: {hint}" if hint
                   else "no GPU offload available -> CPU")
        return False
    if gpu is None:
        if device != "auto":
            raise BackendUnavailableError(
                f"device={device!r} asked for, but no GPU was found",
                hint="use device='auto' or 'cpu'; `edgeslm doctor` shows what this machine offers",
            )
        why.append("no GPU found -> CPU")
        return False
    return True


# ------------------------------------------------------------------------------------ plans


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
    info: Any = None,
) -> Plan:
    """Plan how to run the model at *path* (anything a registered backend opens: a ``.gguf`` file,
    an ONNX GenAI folder or its ``genai_config.json``...). *info* is the parsed header, when already
    read. The backend is the one the registry finds for the path (:mod:`edgeslm.backends.registry`)."""
    from ..backends.registry import backend_for_path

    why: list[str] = []
    spec, path = backend_for_path(path, backend)
    if backend == "auto":
        why.append(f"{spec.describe} -> {spec.name} backend")
    backend = spec.name
    if n_gpu_layers is not None and (not isinstance(n_gpu_layers, int) or n_gpu_layers < 0):
        raise InvalidRequestError(f"n_gpu_layers must be an integer >= 0, got {n_gpu_layers!r}",
                                  hint="0 = CPU only, 999 = every layer on the GPU")
    size = _size(path)
    shape = spec.shape(info, size) if spec.shape is not None and info is not None else None
    if shape is None:
        n = n_layers or 32
        shape = ModelShape(n, ((size - size // 10) // n,) * n, size // 10, _kv_guess(size), context_length, "file size")
    trained = context_length or shape.context_length
    _check_ctx(n_ctx, trained, path.name)
    ctx = n_ctx or min(trained or DEFAULT_CTX, DEFAULT_CTX)
    if n_ctx is None:
        why.append(f"context {ctx} tokens (default cap {DEFAULT_CTX}; pass n_ctx= for more, up to {trained or '?'})")
    hw = hardware or detect(probe_engine=spec.offloads_layers)
    use_gpu = spec.offloads_layers and device != "cpu" and _gpu_usable(hw, device, why)
    fit = _fit(shape, hw, ctx, use_gpu=use_gpu, n_gpu_layers=n_gpu_layers, label=path.name)
    if fit is None:
        raise _refuse(f"{path.name} with n_ctx={ctx}", shape.total_bytes(ctx), hw, "")
    why += fit.why
    dev = fit.device
    if not spec.offloads_layers and device not in ("auto", "cpu"):
        dev = device  # the engine places the whole model itself
    return Plan(
        backend=backend, device=dev, n_gpu_layers=fit.layers, n_ctx=ctx, path=os.fspath(path),
        est_memory_bytes=fit.total, why=why, gpu_memory_bytes=fit.gpu, n_layers=shape.n_layers,
    )


def _kv_guess(size_bytes: int) -> int:
    """KV cache per token when nothing better is known: ~0.12 MiB for 7B-class models, scaled by size."""
    return max(16 * 1024, int(0.12 * MIB * min(1.0, size_bytes / (4.5 * GIB))))


def _rank(quant: str, order: tuple[str, ...]) -> int:
    q = quant.upper()
    return order.index(q) if q in order else len(order)


def plan_catalog(entry: Any, *, n_ctx: int | None = None, hardware: Hardware | None = None,
                 prefer_cached: bool = True, device: str = "auto") -> Plan:
    """Pick the variant (quantization), device and GPU layers for a catalog entry on this machine.

    On a GPU quality comes first: the biggest quantization whose every layer fits. Else the
    preferred CPU quantization with as many layers on the GPU as fit. On a CPU decoding is bound by
    memory bandwidth, so 4-5 bit quantizations come first. A cached variant that fits wins over a
    download. Raises :class:`~edgeslm.InsufficientMemoryError` when no variant fits in RAM.
    """
    from ..store import cached_variant_path

    hw = hardware or detect()
    _check_ctx(n_ctx, entry.context_length, entry.id)
    ctx = n_ctx or min(entry.context_length, DEFAULT_CTX)
    why: list[str] = [f"hardware: {hw.summary()}"]
    ggufs = [v for v in entry.variants if _offloads(v.format)] or list(entry.variants)  # the planner sizes layers
    use_gpu = _gpu_usable(hw, device, why)
    shapes = {id(v): ModelShape.from_catalog(entry, v) for v in ggufs}
    fits: dict[int, _Fit] = {}
    for v in ggufs:
        shape = shapes[id(v)]
        f = _fit(shape, hw, ctx, use_gpu=use_gpu, n_gpu_layers=None, label=f"{entry.id}:{v.quant}") if shape else None
        if f is not None:
            fits[id(v)] = f

    def choose(variants: list[Any]) -> Any:
        full = [v for v in variants if id(v) in fits and fits[id(v)].device != "cpu"
                and fits[id(v)].layers == ALL_LAYERS and not fits[id(v)].tight]
        if full:
            return min(full, key=lambda v: _rank(v.quant, GPU_ORDER))
        for tight in (False, True):
            ok = [v for v in variants if id(v) in fits and fits[id(v)].tight == tight]
            if ok:
                return min(ok, key=lambda v: (_rank(v.quant, CPU_ORDER), -fits[id(v)].layers))
        return None

    chosen = choose(ggufs)
    if chosen is None:
        smallest = min(ggufs, key=lambda v: shapes[id(v)].total_bytes(ctx) if shapes[id(v)] else 1 << 62)
        need = shapes[id(smallest)].total_bytes(ctx) if shapes[id(smallest)] else 0
        raise _refuse(f"{entry.id} (smallest variant {smallest.quant}, n_ctx={ctx})", need, hw,
                      " and no GPU it can use" if not use_gpu else " even with the GPU's share")
    if prefer_cached:
        cached = choose([v for v in ggufs if cached_variant_path(v) is not None])
        if cached is not None and cached is not chosen:
            why.append(
                f"{entry.id}:{cached.quant} {CACHED_NOTE} and fits (~{fits[id(cached)].total / GIB:.1f} GiB): using "
                f"it instead of downloading {chosen.quant}; pass quant= to choose"
            )
            chosen = cached
    fit = fits[id(chosen)]
    if fit.device == "cpu":
        why.append("CPU: preferring Q4/Q5 quantizations (decode speed is bound by memory bandwidth)")
    for v in sorted(ggufs, key=lambda v: _rank(v.quant, GPU_ORDER if fit.device != "cpu" else CPU_ORDER)):
        if id(v) not in fits:
            need = shapes[id(v)].total_bytes(ctx) if shapes[id(v)] else 0
            why.append(f"{entry.id}:{v.quant}: needs ~{need / GIB:.1f} GiB, does not fit")
    why += fit.why
    return Plan(
        backend=_backend_name(chosen.format),
        device=fit.device,
        n_gpu_layers=fit.layers,
        n_ctx=ctx,
        variant=f"{entry.id}:{chosen.quant}",
        est_memory_bytes=fit.total,
        why=why,
        gpu_memory_bytes=fit.gpu,
        n_layers=shapes[id(chosen)].n_layers if shapes[id(chosen)] else None,
    )


def plan_variant(entry: Any, variant: Any, hw: Hardware, *, n_ctx: int | None = None) -> Plan | str:
    """How one catalog variant would run here, or the reason it cannot (for ``edgeslm doctor``)."""
    ctx = n_ctx or min(entry.context_length, DEFAULT_CTX)
    shape = ModelShape.from_catalog(entry, variant)
    if shape is None:
        return "size unknown"
    if variant.device == "cuda" and not hw.cuda:
        return "needs an NVIDIA GPU (onnxruntime-genai-cuda)"
    why: list[str] = []
    use_gpu = _offloads(variant.format) and _gpu_usable(hw, "auto", why)
    fit = _fit(shape, hw, ctx, use_gpu=use_gpu, n_gpu_layers=None, label=f"{entry.id}:{variant.quant}")
    if fit is None:
        return f"needs ~{shape.total_bytes(ctx) / GIB:.1f} GiB, has {hw.ram_total / GIB:.1f} GiB RAM"
    return Plan(backend=_backend_name(variant.format), device=fit.device,
                n_gpu_layers=fit.layers, n_ctx=ctx, variant=f"{entry.id}:{variant.quant}",
                est_memory_bytes=fit.total, why=why + fit.why, gpu_memory_bytes=fit.gpu, n_layers=shape.n_layers)


def _backend_name(fmt: str) -> str:
    from ..backends.registry import backend_for_format

    return backend_for_format(fmt).name


def _offloads(fmt: str) -> bool:
    from ..backends.registry import backend_for_format

    return backend_for_format(fmt).offloads_layers


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
