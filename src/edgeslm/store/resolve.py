"""Turn what a user typed into a local model path: the one place that knows catalog, cache and download.

:func:`resolve` accepts a local file or folder that a registered engine opens (a ``.gguf``
file, an ONNX GenAI folder...), a catalog id (with an
optional ``quant`` / ``format``), a bundled test model id, ``hf://owner/repo/file.gguf`` and
``hf://owner/repo/folder`` (``hf://owner/repo@revision/...`` pins a revision).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import ModelNotFoundError, OfflineError
from .bundled import BUNDLED, bundled_path
from .cache import cached_path, cached_variant_path
from .catalog import CatalogEntry, Variant, get_entry, parse_hf_ref, pull_command
from .download import pull
from .paths import offline

__all__ = ["ResolvedModel", "resolve"]


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model lives on disk, and what the catalog knows about it (None for plain paths)."""

    path: Path
    entry: CatalogEntry | None = None
    variant: Variant | None = None
    source: str = "local"  # "local" | "bundled" | "cache" | "download"
    format: str = field(default="gguf")


def resolve(
    ref: str | os.PathLike[str],
    *,
    quant: str | None = None,
    format: str | None = None,
    device: str | None = None,
    download: bool = False,
    progress: bool = True,
    token: str | None = None,
) -> ResolvedModel:
    """Find the local path of a model; download it first when ``download`` is true and it is not cached.

    Cached models resolve with no network access. When the model is not cached and ``download`` is
    false (or the network is off), raise ModelNotFoundError / OfflineError naming the exact
    ``edgeslm pull`` command.
    """
    s = os.fspath(ref)
    if isinstance(ref, os.PathLike) or _looks_like_path(s):
        p = Path(s).expanduser()
        if not p.exists():
            raise ModelNotFoundError(f"no model file or folder at {p}", hint="check the path")
        return ResolvedModel(path=p, source="local", format=_format_of(p))

    if s.startswith("hf://"):
        h = parse_hf_ref(s)
        cached = cached_path(h.repo, h.revision, h.path)
        if cached is not None:
            return ResolvedModel(path=cached, source="cache", format=_format_of(cached))
        _no_download_check(s, None, None, download, offline())
        path = pull(s, progress=progress, token=token)
        return ResolvedModel(path=path, source="download", format=_format_of(path))

    entry = get_entry(s)
    variant = entry.variant(quant, format, device)
    if variant.source == "bundled":
        bid = entry.id if entry.id in BUNDLED else s
        return ResolvedModel(path=bundled_path(bid), entry=entry, variant=variant, source="bundled")
    cached = cached_variant_path(variant)
    if cached is not None:
        return ResolvedModel(path=cached, entry=entry, variant=variant, source="cache", format=variant.format)
    _no_download_check(entry.id, variant.quant if quant or format else None, format, download, offline())
    path = pull(
        entry.id, quant=variant.quant, format=variant.format, device=variant.device, progress=progress, token=token
    )
    return ResolvedModel(path=path, entry=entry, variant=variant, source="download", format=variant.format)


def _no_download_check(ref: str, quant: str | None, format: str | None, download: bool, is_offline: bool) -> None:
    cmd = pull_command(ref, quant, format)
    if is_offline:
        raise OfflineError(
            f"{ref} is not in the local cache and offline mode is on (EDGESLM_OFFLINE / HF_HUB_OFFLINE)",
            hint=f"on a machine with network access run `{cmd}` (or unset EDGESLM_OFFLINE and HF_HUB_OFFLINE)",
        )
    if not download:
        raise ModelNotFoundError(f"{ref} is not in the local cache", hint=f"download it with `{cmd}`")


def _format_of(path: Path) -> str:
    """The format of the engine that opens *path* (the registry decides; see ``backends/registry.py``)."""
    from ..backends.registry import backend_for_path

    spec, _ = backend_for_path(path)
    return spec.formats[0] if spec.formats else spec.name


def _looks_like_path(s: str) -> bool:
    if s.startswith("hf://"):
        return False
    if s.lower().endswith((".gguf", "genai_config.json")) or os.sep in s or s.startswith((".", "~", "/")):
        return True
    return "/" in s or Path(s).exists()
