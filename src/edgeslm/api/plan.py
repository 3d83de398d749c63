"""``edgeslm.plan``: how a model would run here, without downloading it."""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.hardware import Hardware, detect
from ..runtime.planner import CACHED_NOTE, Plan, plan_catalog, plan_for_path

__all__ = ["CACHED_NOTE", "plan"]


def plan(
    model: str | os.PathLike[str],
    *,
    n_ctx: int | None = None,
    hardware: Hardware | None = None,
    prefer_cached: bool = True,
    device: str = "auto",
) -> Plan:
    """Pick backend, variant (quantization), GPU layers and context for *model* on this machine.

    For a catalog id the variant is chosen from the model's shape and this machine's memory: the
    best quantization whose every layer fits in GPU memory, else as many layers as fit with the
    rest on the CPU, else the CPU. A variant already in the local cache that fits wins over one that
    would have to be downloaded. Local files are planned from their own header. What cannot run
    here raises :class:`~edgeslm.InsufficientMemoryError` (or :class:`~edgeslm.InvalidRequestError`
    for a context beyond the model's trained length).
    """
    from ..store import get_entry

    hw = hardware or detect()
    p = Path(os.fspath(model)).expanduser()
    if p.exists():
        from ..store import validate_model_file

        info = validate_model_file(p)
        return plan_for_path(p, n_ctx=n_ctx, hardware=hw, info=info, device=device)
    return plan_catalog(get_entry(os.fspath(model)), n_ctx=n_ctx, hardware=hw, prefer_cached=prefer_cached,
                        device=device)
