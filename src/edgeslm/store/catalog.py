"""The model catalog, and parsing of ``hf://`` references. No network access and no cache access here.

The catalog is a data file, ``models/catalog.json`` in the repository, shipped in the wheel as
``edgeslm/_catalog/catalog.json``. ``$EDGESLM_CATALOG`` may name an extra JSON file in the same
format whose entries are added (or replace entries with the same id).

Turning what a user typed into a local path is :func:`edgeslm.store.resolve.resolve`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .._errors import EdgeSLMError, InvalidRequestError, ModelNotFoundError

__all__ = [
    "CHAT_FORMATS",
    "TOOL_FORMATS",
    "CatalogEntry",
    "FileSpec",
    "HFRef",
    "Variant",
    "catalog_path",
    "get_entry",
    "list_entries",
    "load_catalog",
    "parse_hf_ref",
    "pull_command",
    "safe_revision",
]

CHAT_FORMATS = frozenset({"phi4", "gemma3", "llama3", "chatml", "generic", "plain"})
TOOL_FORMATS = frozenset({"phi4", "hermes", "llama3", "gemma3", "generic"})
FORMATS = frozenset({"gguf", "onnx"})  # the built-in backends' formats; registered backends add theirs
SOURCES = frozenset({"hf", "bundled"})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEFAULT_CTX = 4096
_FILE_SUFFIXES = (".gguf", ".onnx", ".json", ".data", ".bin", ".model", ".txt")
_HF_FORMS = "hf://owner/repo/file.gguf, hf://owner/repo/folder, or hf://owner/repo@revision/file.gguf"
# Hub revisions that contain '/' and are written unquoted in an hf:// reference: refs/pr/<n>, refs/convert/<x>.
_SLASHED_REFS = ("pr", "convert")


class CatalogError(EdgeSLMError):
    """The catalog data file is malformed (a packaging bug, not a user error)."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a variant: its name in the repository, size and SHA-256 when known."""

    name: str
    size: int | None = None
    sha256: str | None = None
    size_exact: bool = False


@dataclass(frozen=True)
class Variant:
    """One downloadable form of a model: a format (gguf/onnx), a quantization, where it lives."""

    format: str
    quant: str
    source: str
    repo: str | None
    revision: str | None
    files: tuple[FileSpec, ...] = ()
    folder: str | None = None
    device: str = "any"
    gated: bool = False
    default: bool = False
    size_bytes: int | None = None
    size_exact: bool = False
    memory_estimate_bytes: int | None = None
    package: str | None = None
    notes: str | None = None

    @property
    def primary_file(self) -> FileSpec | None:
        """The file an engine opens (the first shard of a split GGUF); None for folders."""
        return self.files[0] if self.files else None

    @property
    def total_size(self) -> int | None:
        if self.size_bytes is not None:
            return self.size_bytes
        sizes = [f.size for f in self.files]
        return sum(sizes) if sizes and all(s is not None for s in sizes) else None  # type: ignore[misc]

    @property
    def label(self) -> str:
        """Short human label, e.g. ``gguf Q4_K_M`` or ``onnx int4 (cuda)``."""
        dev = f" ({self.device})" if self.device != "any" else ""
        return f"{self.format} {self.quant}{dev}"


@dataclass(frozen=True)
class CatalogEntry:
    """A model family member as the catalog describes it, with its variants."""

    id: str
    name: str
    family: str
    base_repo: str | None
    license: str
    gated: bool
    parameters: int
    context_length: int
    chat_format: str
    tool_format: str
    kv_bytes_per_token: int
    variants: tuple[Variant, ...]
    aliases: tuple[str, ...] = ()
    notes: str | None = None
    n_layers: int = 0  # repeating transformer blocks (0 when unknown); sizes partial GPU offload

    @property
    def bundled(self) -> bool:
        return any(v.source == "bundled" for v in self.variants)

    def variant(self, quant: str | None = None, format: str | None = None, device: str | None = None) -> Variant:
        """Pick a variant by quantization / format / device; the catalog default when unspecified."""
        cands = list(self.variants)
        if format is not None:
            cands = [v for v in cands if v.format == format.lower()]
        if quant is not None:
            cands = [v for v in cands if v.quant.lower() == quant.lower()]
        if device is not None and device != "auto":
            dev = [v for v in cands if v.device in (device, "any")]
            cands = dev or cands
        if not cands:
            have = ", ".join(v.label for v in self.variants)
            raise ModelNotFoundError(
                f"{self.id} has no variant with format={format or 'any'} quant={quant or 'any'}",
                hint=f"available variants: {have}",
            )
        for v in cands:
            if v.default:
                return v
        gguf = [v for v in cands if v.format == "gguf"]
        return (gguf or cands)[0]

    def memory_estimate(self, variant: Variant, n_ctx: int = _DEFAULT_CTX) -> int | None:
        """Bytes needed to run ``variant`` with ``n_ctx`` tokens of f16 KV cache (rough)."""
        size = variant.total_size
        if size is None:
            return variant.memory_estimate_bytes
        return int(size * 1.03 + self.kv_bytes_per_token * n_ctx + 150 * 2**20)


# ------------------------------------------------------------------------------------ loading


def catalog_path() -> Path:
    """The shipped catalog file (wheel location first, then the source tree for editable installs)."""
    shipped = Path(__file__).resolve().parents[1] / "_catalog" / "catalog.json"
    if shipped.is_file():
        return shipped
    repo = Path(__file__).resolve().parents[3] / "models" / "catalog.json"
    if repo.is_file():
        return repo
    raise CatalogError(
        "the model catalog is missing from this installation",
        hint="reinstall edgeslm (pip install --force-reinstall edgeslm)",
    )


@functools.lru_cache(maxsize=8)
def _load(path: str, extra: str | None, mtimes: tuple[float, ...]) -> dict[str, CatalogEntry]:
    entries: dict[str, CatalogEntry] = {}
    for p in (path, extra):
        if p is None:
            continue
        try:
            data = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CatalogError(f"cannot read the model catalog {p}: {e}", hint="fix or remove that file") from e
        for raw in _models_of(data, p):
            e = _parse_entry(raw, p)
            entries[e.id] = e
    # aliases must not shadow ids or each other
    seen: dict[str, str] = {}
    for e in entries.values():
        for name in (e.id, *e.aliases):
            if name in seen and seen[name] != e.id:
                raise CatalogError(f"catalog name {name!r} is used by both {seen[name]} and {e.id}")
            seen[name] = e.id
    return entries


def load_catalog() -> dict[str, CatalogEntry]:
    """All catalog entries by id (validated; cached until the files change)."""
    path = catalog_path()
    extra = os.environ.get("EDGESLM_CATALOG") or None
    mt = [path.stat().st_mtime]
    if extra:
        try:
            mt.append(Path(extra).stat().st_mtime)
        except OSError as e:
            raise CatalogError(
                f"EDGESLM_CATALOG names {extra}, which cannot be read", hint="fix the path or unset it"
            ) from e
    return _load(str(path), extra, tuple(mt))


def list_entries() -> list[CatalogEntry]:
    """Catalog entries in file order."""
    return list(load_catalog().values())


def get_entry(model_id: str) -> CatalogEntry:
    """The catalog entry for an id or alias (case-insensitive)."""
    cat = load_catalog()
    key = model_id.strip().lower()
    for e in cat.values():
        if key == e.id.lower() or key in (a.lower() for a in e.aliases):
            return e
    import difflib

    names = [n for e in cat.values() for n in (e.id, *e.aliases)]
    close = difflib.get_close_matches(key, names, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelNotFoundError(
        f"{model_id!r} is not a known model id, a .gguf file, or an ONNX GenAI folder",
        hint=f"{hint}`edgeslm list` shows the catalog; a Hub file works as hf://owner/repo/file.gguf",
    )


def _models_of(data: Any, p: str) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise CatalogError(f"{p}: expected an object with a 'models' list")
    return data["models"]


def _req(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise CatalogError(f"{where}: missing {key!r}")
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise CatalogError(f"{where}: {key!r} has the wrong type ({type(v).__name__})")
    return v


def _parse_entry(raw: Any, p: str) -> CatalogEntry:
    if not isinstance(raw, dict):
        raise CatalogError(f"{p}: every model must be an object")
    mid = _req(raw, "id", str, p)
    where = f"{p}: model {mid!r}"
    variants = tuple(_parse_variant(v, f"{where} variant #{i}") for i, v in enumerate(raw.get("variants", [])))
    if not variants:
        raise CatalogError(f"{where}: no variants")
    chat = _req(raw, "chat_format", str, where)
    tool = _req(raw, "tool_format", str, where)
    if chat not in CHAT_FORMATS:
        raise CatalogError(f"{where}: chat_format {chat!r} not in {sorted(CHAT_FORMATS)}")
    if tool not in TOOL_FORMATS:
        raise CatalogError(f"{where}: tool_format {tool!r} not in {sorted(TOOL_FORMATS)}")
    return CatalogEntry(
        id=mid,
        name=raw.get("name", mid),
        family=_req(raw, "family", str, where),
        base_repo=raw.get("base_repo"),
        license=_req(raw, "license", str, where),
        gated=bool(_req(raw, "gated", bool, where)),
        parameters=_req(raw, "parameters", int, where),
        context_length=_req(raw, "context_length", int, where),
        chat_format=chat,
        tool_format=tool,
        kv_bytes_per_token=raw.get("kv_bytes_per_token", 0),
        variants=variants,
        aliases=tuple(raw.get("aliases", ())),
        notes=raw.get("notes"),
        n_layers=int(raw.get("n_layers", 0)) if isinstance(raw.get("n_layers", 0), int) else 0,
    )


def _formats() -> frozenset[str]:
    """The formats some registered backend serves (the built-ins: gguf, onnx)."""
    from ..backends.registry import backend_names, get_backend

    return FORMATS | frozenset(f for n in backend_names() for f in get_backend(n).formats)


def _parse_variant(raw: Any, where: str) -> Variant:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must be an object")
    fmt = _req(raw, "format", str, where)
    src = raw.get("source", "hf")
    formats = _formats()
    if fmt not in formats:
        raise CatalogError(f"{where}: format {fmt!r} is served by no backend (known: {sorted(formats)})")
    if src not in SOURCES:
        raise CatalogError(f"{where}: source {src!r} not in {sorted(SOURCES)}")
    files = []
    for f in raw.get("files", []):
        name = _req(f, "name", str, where)
        sha = f.get("sha256")
        if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
            raise CatalogError(f"{where}: sha256 of {name!r} must be 64 lowercase hex digits or null")
        if not _safe_repo_path(name):
            raise CatalogError(f"{where}: file name {name!r} must be a relative path inside the repository")
        files.append(FileSpec(name=name, size=f.get("size"), sha256=sha, size_exact=bool(f.get("size_exact"))))
    repo = raw.get("repo")
    folder = raw.get("folder")
    if src == "hf":
        if not (isinstance(repo, str) and _REPO.match(repo)):
            raise CatalogError(f"{where}: 'repo' must be owner/name")
        if not files and not folder:
            raise CatalogError(f"{where}: a Hub variant needs 'files' or 'folder'")
        if folder is not None and not (isinstance(folder, str) and _safe_repo_path(folder.strip("/"))):
            raise CatalogError(f"{where}: folder {folder!r} must be a relative path inside the repository")
    elif not files:
        raise CatalogError(f"{where}: a bundled variant needs its file")
    if raw.get("revision") is not None and not safe_revision(raw["revision"]):
        raise CatalogError(f"{where}: revision {raw['revision']!r} is not a valid Hub revision")
    return Variant(
        format=fmt,
        quant=_req(raw, "quant", str, where),
        source=src,
        repo=repo,
        revision=raw.get("revision") or ("main" if src == "hf" else None),
        files=tuple(files),
        folder=folder,
        device=raw.get("device", "any"),
        gated=bool(raw.get("gated", False)),
        default=bool(raw.get("default", False)),
        size_bytes=raw.get("size_bytes"),
        size_exact=bool(raw.get("size_exact", False)),
        memory_estimate_bytes=raw.get("memory_estimate_bytes"),
        package=raw.get("package"),
        notes=raw.get("notes"),
    )


# ------------------------------------------------------------------------------------ resolving


@dataclass(frozen=True)
class HFRef:
    """A parsed ``hf://owner/repo[@revision]/path`` reference."""

    repo: str
    revision: str
    path: str

    @property
    def is_file(self) -> bool:
        return self.path.lower().endswith(_FILE_SUFFIXES)

    def __str__(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        return f"hf://{self.repo}{rev}/{self.path}"


def safe_revision(rev: object) -> bool:
    """True for a revision that is safe as a cache folder name: a branch, tag, commit or ``refs/pr/1``.

    Refuses empty, ``.`` and ``..`` segments, backslashes and control characters.
    """
    if not isinstance(rev, str) or not rev or "\\" in rev or any(ord(c) < 32 or ord(c) == 127 for c in rev):
        return False
    return all(seg not in ("", ".", "..") for seg in rev.split("/"))


def parse_hf_ref(ref: str) -> HFRef:
    """Parse ``hf://owner/repo[@rev]/path/in/repo`` (``rev`` may be ``refs/pr/1`` or URL-quoted)."""
    if not isinstance(ref, str) or not ref.startswith("hf://"):
        raise InvalidRequestError(f"not an hf:// reference: {ref!r}", hint=f"use {_HF_FORMS}")
    parts = ref[5:].strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        raise ModelNotFoundError(
            f"{ref!r} does not name a file or folder in a Hub repository",
            hint="use hf://owner/repo/file.gguf or hf://owner/repo/onnx-folder",
        )
    owner, name = parts[0], parts[1]
    rest = parts[2:]
    rev = "main"
    if "@" in name:
        name, rev = name.split("@", 1)
        if rev == "refs" and len(rest) >= 3 and rest[0] in _SLASHED_REFS:
            rev, rest = f"refs/{rest[0]}/{rest[1]}", rest[2:]
        rev = unquote(rev)
    repo = f"{owner}/{name}"
    path = "/".join(rest)
    if not _REPO.match(repo) or not safe_revision(rev) or not _safe_repo_path(path):
        raise ModelNotFoundError(
            f"{ref!r} is not a valid Hub reference",
            hint=f"use {_HF_FORMS}; the path and revision must not contain '..', '.' or backslashes",
        )
    return HFRef(repo=repo, revision=rev, path=path)


def _safe_repo_path(path: str) -> bool:
    """A relative path inside a repository: no empty, ``.`` or ``..`` segments, backslashes or NULs."""
    if not path or "\\" in path or "\x00" in path or path.startswith("/"):
        return False
    return all(seg not in ("", ".", "..") for seg in path.split("/"))


def pull_command(ref: str, quant: str | None = None, format: str | None = None) -> str:
    """The ``edgeslm pull`` command line that fetches ``ref``."""
    cmd = f"edgeslm pull {ref}"
    if quant:
        cmd += f" --quant {quant}"
    if format:
        cmd += f" --format {format}"
    return cmd
