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


def plan(model: str | os.PathLike[str], *, n_ctx: int | None = None, hardware: Hardware | None = None) -> Plan:
    """Pick backend, variant (quantization), GPU layers and context for *model* on this machine.

    For a catalog id the variant is chosen from the catalog's memory estimates: the best
    quantization that fits in free GPU memory, else in free RAM. Local files are planned as they are.
    """
    from ..store import get_entry

    hw = hardware or detect()
    text = os.fspath(model)
    p = Path(text).expanduser()
    if p.exists():
        return plan_for_path(p, n_ctx=n_ctx, hardware=hw)
    entry = get_entry(text)
    ctx = n_ctx or min(entry.context_length, 4096)
    gpu = max(hw.gpus, key=lambda g: g.memory_free or g.memory_total, default=None)
    offload = bool(hw.llama_gpu_offload) and gpu is not None
    budget_gpu = (gpu.memory_free or gpu.memory_total) * 0.9 if offload and gpu else 0
    budget_ram = hw.ram_available * 0.8
    why: list[str] = [f"hardware: {hw.summary()}"]
    ggufs = [v for v in entry.variants if v.format == "gguf"] or list(entry.variants)

    def need(v: object) -> int:
        return int(entry.memory_estimate(v, ctx) or 0)  # type: ignore[arg-type]

    chosen = None
    device, layers = "cpu", 0
    if offload:  # on a GPU, quality first: the biggest quantization that fits
        for v in sorted(ggufs, key=lambda v: _rank(v.quant, GPU_ORDER)):
            if need(v) <= budget_gpu:
                chosen, device, layers = v, gpu.api if gpu else "cpu", 999
                why.append(f"{v.quant}: needs ~{need(v) / GIB:.1f} GiB, fits in GPU memory -> all layers on GPU")
                break
    if chosen is None:
        # On a CPU decoding is memory-bound: 4-5 bit quantizations are the fastest at good quality.
        why.append("CPU: preferring Q4/Q5 quantizations (decode speed is bound by memory bandwidth)")
        for v in sorted(ggufs, key=lambda v: _rank(v.quant, CPU_ORDER)):
            if need(v) <= budget_ram:
                chosen = v
                why.append(f"{v.quant}: needs ~{need(v) / GIB:.1f} GiB of {hw.ram_available / GIB:.1f} GiB free RAM"
                           + ("" if offload else " (no GPU offload available)"))
                break
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
