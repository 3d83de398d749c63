"""``edgeslm.plan``: how a catalog model would run here, without downloading it."""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.hardware import Hardware, detect
from ..runtime.planner import GIB, Plan, plan_for_path

__all__ = ["plan"]

GPU_ORDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q4_1", "IQ4_XS", "Q3_K_M")
CPU_ORDER = ("Q4_K_M", "Q4_0", "Q4_1", "Q5_K_M", "IQ4_XS", "Q6_K", "Q8_0", "Q3_K_M")


def _rank(quant: str, order: tuple[str, ...]) -> int:
    q = quant.upper()
    return order.index(q) if q in order else len(order)


CACHED_NOTE = "is already in the local cache"


def _no_offload(hw: Hardware) -> str:
    if hw.gpus and hw.llama_gpu_offload is False:
        return ("this llama-cpp-python build cannot use the GPU: reinstall it with "
                'CMAKE_ARGS="-DGGML_CUDA=on" (or -DGGML_METAL=on) to offload layers')
    return "no GPU offload available"


def plan(
    model: str | os.PathLike[str],
    *,
    n_ctx: int | None = None,
    hardware: Hardware | None = None,
    prefer_cached: bool = True,
) -> Plan:
    """Pick backend, variant (quantization), GPU layers and context for *model* on this machine.

    For a catalog id the variant is chosen from the catalog's memory estimates: the best
    quantization that fits in free GPU memory, else in free RAM. With ``prefer_cached`` a variant
    already in the local cache that fits wins over one that would have to be downloaded (so a
    cached model never triggers a second download, and works offline). Local files are planned
    as they are.
    """
    from ..store import cached_variant_path, get_entry

    hw = hardware or detect()
    text = os.fspath(model)
    p = Path(text).expanduser()
    if p.exists():
        return plan_for_path(p, n_ctx=n_ctx, hardware=hw)
    entry = get_entry(text)
    ctx = n_ctx or min(entry.context_length, 4096)
    gpu = max(hw.gpus, key=lambda g: g.memory_free or g.memory_total, default=None)
    offload = bool(hw.llama_gpu_offload) and gpu is not None
    budget_ram = hw.ram_available * 0.8
    why: list[str] = [f"hardware: {hw.summary()}"]
    ggufs = [v for v in entry.variants if v.format == "gguf"] or list(entry.variants)

    def need(v: object) -> int:
        return int(entry.memory_estimate(v, ctx) or 0)  # type: ignore[arg-type]

    # On a GPU quality comes first (the biggest quantization that fits); on a CPU decoding is
    # memory-bound, so 4-5 bit quantizations are the fastest at good quality.
    tiers = [("gpu", GPU_ORDER, (gpu.memory_free or gpu.memory_total) * 0.9)] if offload and gpu else []
    tiers.append(("cpu", CPU_ORDER, budget_ram))

    def choose(variants: list) -> tuple:
        for where, order, budget in tiers:
            for v in sorted(variants, key=lambda v: _rank(v.quant, order)):
                if need(v) <= budget:
                    return v, where
        return None, None

    chosen, where = choose(ggufs)
    if prefer_cached:
        cached, cached_where = choose([v for v in ggufs if cached_variant_path(v) is not None])
        if cached is not None and cached is not chosen:
            why.append(
                f"{entry.id}:{cached.quant} {CACHED_NOTE} and fits (~{need(cached) / GIB:.1f} GiB): using it "
                f"instead of downloading {chosen.quant if chosen else 'another variant'}; pass quant= to choose"
            )
            chosen, where = cached, cached_where
    device, layers = "cpu", 0
    if where == "gpu" and gpu is not None:
        device, layers = gpu.api, 999
        why.append(f"{chosen.quant}: needs ~{need(chosen) / GIB:.1f} GiB, fits in GPU memory -> all layers on GPU")
    else:
        why.append("CPU: preferring Q4/Q5 quantizations (decode speed is bound by memory bandwidth)")
        for v in sorted(ggufs, key=lambda v: _rank(v.quant, CPU_ORDER)):
            if v is chosen:
                why.append(f"{v.quant}: needs ~{need(v) / GIB:.1f} GiB of {hw.ram_available / GIB:.1f} GiB free RAM"
                           + ("" if offload else f" ({_no_offload(hw)})"))
                break
            if need(v) > budget_ram:
                why.append(f"{v.quant}: needs ~{need(v) / GIB:.1f} GiB, does not fit")
    if chosen is None:
        chosen = min(ggufs, key=need)
        why.append(f"nothing fits comfortably; smallest variant {chosen.quant} (expect swapping)")
    return Plan(
        backend="llama.cpp" if chosen.format == "gguf" else "onnx",
        device=device,
        n_gpu_layers=layers,
        n_ctx=ctx,
        variant=f"{entry.id}:{chosen.quant}",
        est_memory_bytes=need(chosen),
        why=why,
    )
