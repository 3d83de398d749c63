"""Check a model file or folder before any engine sees it (model files are untrusted input).

Each engine's parser lives beside its backend (``backends/gguf_file.py``, ``backends/onnx_files.py``)
and is that engine's :attr:`~edgeslm.backends.registry.BackendSpec.validate`; this module asks the
registry which engine opens a path and runs its check, so the store knows no file format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._errors import CorruptModelError, EdgeSLMError, ModelNotFoundError

__all__ = ["validate_model_file"]


def validate_model_file(path: str | os.PathLike[str]) -> Any:
    """Check *path* with the check of the engine that opens it; return what the check parsed (the
    header the planner reads the model's shape from, ``None`` for an engine without one). Raise
    :class:`~edgeslm.CorruptModelError` when it is damaged or no engine opens it."""
    from ..backends.registry import backend_for_path, backend_names, get_backend

    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"no model file at {p}", hint="check the path, or pull the model first")
    try:
        spec, root = backend_for_path(p)
    except EdgeSLMError:
        what = " or ".join(get_backend(n).describe for n in backend_names())
        raise CorruptModelError(f"{p} is not a model any engine here opens",
                                hint=f"pass {what}, or a catalog id") from None
    return spec.validate(root) if spec.validate is not None else None
