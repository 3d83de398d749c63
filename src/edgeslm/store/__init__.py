"""Model store: catalog, verified downloads into a local cache, offline resolution, file checks.

Modules, each knowing only those before it: ``paths`` / ``files`` (where, hashing, locks),
``catalog`` (the data file, ``hf://`` references), ``validate`` (runs the header check of the engine that opens a file),
``cache`` (layout, manifests, lookups, removal), ``download`` (huggingface_hub transfers, resume,
verification, quarantine), ``resolve`` (what a user typed -> a local path).
Heavy dependencies (huggingface_hub, rich) are imported only when a function needs them.
"""

from __future__ import annotations

from .bundled import BUNDLED, bundled_path
from .cache import CachedFile, cached_models, cached_path, cached_variant_path, remove, verify_cache
from .catalog import (
    CatalogEntry,
    FileSpec,
    Variant,
    get_entry,
    list_entries,
    load_catalog,
    parse_hf_ref,
    pull_command,
)
from .download import pull
from .paths import cache_home, offline
from .resolve import ResolvedModel, resolve
from .validate import validate_model_file

__all__ = [
    "BUNDLED",
    "CachedFile",
    "CatalogEntry",
    "FileSpec",
    "ResolvedModel",
    "Variant",
    "bundled_path",
    "cache_home",
    "cached_models",
    "cached_path",
    "cached_variant_path",
    "get_entry",
    "list_entries",
    "load_catalog",
    "offline",
    "parse_hf_ref",
    "pull",
    "pull_command",
    "remove",
    "resolve",
    "validate_model_file",
    "verify_cache",
]
