"""Where edgeslm keeps its files: ``$EDGESLM_HOME`` or the platform's user cache folder."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_home", "offline"]


def cache_home() -> Path:
    """Root of the model cache (created on demand)."""
    env = os.environ.get("EDGESLM_HOME")
    if env:
        root = Path(env).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("edgeslm", appauthor=False))
    root.mkdir(parents=True, exist_ok=True)
    return root


def offline() -> bool:
    """True when the user asked for no network (``EDGESLM_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("EDGESLM_OFFLINE", "HF_HUB_OFFLINE")
    )
