"""The local model cache: layout, manifests, lookups, removal. No network access here.

Layout (under :func:`~edgeslm.store.paths.cache_home`)::

    hub/<owner>/<name>/<revision>/<path in repo>      verified files, nothing else
    hub/<owner>/<name>/<revision>/.edgeslm-manifest.json
    partial/<key>-<etag>.incomplete                   bytes of a download in progress (kept for resume)
    locks/<key>.lock                                  one lock per file (and per folder)
    quarantine/<time>-<pid>-<name>                    downloads that failed verification

A file reaches ``hub/`` only after it has been verified; the manifest records how
(``verified_by``: ``sha256``, ``git-sha1`` or ``size``) and the SHA-256 of what is on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .._errors import InvalidRequestError
from .catalog import Variant, get_entry, list_entries, parse_hf_ref, safe_revision
from .files import file_lock, sha256_file, write_json_atomic
from .paths import cache_home

__all__ = [
    "MANIFEST",
    "CachedFile",
    "cached_models",
    "cached_path",
    "cached_variant_path",
    "remove",
    "verify_cache",
]

MANIFEST = ".edgeslm-manifest.json"


@dataclass(frozen=True)
class CachedFile:
    """One verified file in the cache, as its manifest records it."""

    path: Path
    repo: str
    revision: str
    filename: str
    size: int
    sha256: str | None
    commit: str | None
    verified_by: str
    model_id: str | None = None
    quant: str | None = None
    format: str | None = None


# ------------------------------------------------------------------------------------ layout


def hub_root() -> Path:
    return cache_home() / "hub"


def partial_dir() -> Path:
    return cache_home() / "partial"


def repo_dir(repo: str, revision: str) -> Path:
    """The folder of one repository revision; refuses revisions that are not safe folder names."""
    if not safe_revision(revision):
        raise InvalidRequestError(
            f"{revision!r} is not a valid Hub revision",
            hint="use a branch or tag name, a commit hash, or refs/pr/<number>",
        )
    owner, name = repo.split("/", 1)
    return hub_root() / owner / name / quote(revision, safe="")


def in_repo_path(path: object, folder: str | None = None) -> bool:
    """True for a relative path inside a repository (and inside ``folder`` when given).

    Refuses absolute paths, backslashes, NULs and empty, ``.`` or ``..`` segments.
    """
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    if (len(path) > 1 and path[1] == ":") or any(seg in ("", ".", "..") for seg in path.split("/")):
        return False
    return folder is None or path == folder or path.startswith(folder + "/")


def key(*parts: str) -> str:
    """A short stable name for a (repo, revision, path) triple."""
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:24]


def lock_path(repo: str, revision: str, path: str, *, is_folder: bool) -> Path:
    """The lock of one cached file or folder; pull and remove must use the same one."""
    return cache_home() / "locks" / f"{key(repo, revision, path.strip('/') + '/' if is_folder else path)}.lock"


def partials_of(repo: str, revision: str, filename: str) -> list[Path]:
    """Partial downloads of one file (any ETag)."""
    d = partial_dir()
    return sorted(d.glob(f"{key(repo, revision, filename)}-*.incomplete")) if d.is_dir() else []


def quarantine(part: Path, filename: str) -> Path:
    """Move a file that failed verification out of the way (one kept per file name: they can be large)."""
    qdir = cache_home() / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    base = Path(filename).name
    for old in qdir.glob(f"*-{base}"):
        old.unlink(missing_ok=True)
    dest = qdir / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{base}"
    if part.exists():
        os.replace(part, dest)
    return dest


# ------------------------------------------------------------------------------------ manifests


def read_manifest(d: Path) -> dict[str, Any]:
    try:
        data = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data.setdefault("files", {})
            data.setdefault("folders", {})
            return data
    except (OSError, ValueError):
        pass
    return {"files": {}, "folders": {}}


@contextlib.contextmanager
def manifest(d: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the manifest of one repo revision under a lock."""
    d.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_home() / "locks" / f"manifest-{key(str(d))}.lock"):
        data = read_manifest(d)
        yield data
        write_json_atomic(d / MANIFEST, data)


# ------------------------------------------------------------------------------------ lookups


def cached_path(repo: str, revision: str, path: str, sha256: str | None = None) -> Path | None:
    """The local copy of a Hub file or folder if it is cached and complete; no network access.

    With ``sha256``, a cached file whose recorded hash differs counts as not cached.
    """
    d = repo_dir(repo, revision)
    man = read_manifest(d)
    path = path.strip("/")
    rec = man["files"].get(path)
    if rec is not None:
        if sha256 is not None and rec.get("sha256") != sha256:
            return None
        f = d / path
        if f.is_file() and f.stat().st_size == rec.get("size"):
            return f
        return None
    folder = man["folders"].get(path)
    if folder is not None:
        files = folder.get("files", [])
        if files and all((d / name).is_file() for name in files):
            return d / path
    return None


def cached_variant_path(variant: Variant) -> Path | None:
    """The local path of a catalog variant if every file of it is cached (None otherwise)."""
    if variant.source != "hf" or variant.repo is None:
        return None
    rev = variant.revision or "main"
    if variant.folder:
        return cached_path(variant.repo, rev, variant.folder)
    paths = [cached_path(variant.repo, rev, f.name, f.sha256) for f in variant.files]
    if not paths or any(p is None for p in paths):
        return None
    return paths[0]


def cached_models() -> list[CachedFile]:
    """Every verified file in the cache, matched to catalog entries where possible."""
    index: dict[tuple[str, str], tuple[str, str, str]] = {}
    for e in list_entries():
        for v in e.variants:
            if v.repo:
                for f in v.files:
                    index[(v.repo, f.name)] = (e.id, v.quant, v.format)
                if v.folder:
                    index[(v.repo, v.folder.strip("/"))] = (e.id, v.quant, v.format)
    out: list[CachedFile] = []
    for man_path in sorted(hub_root().glob(f"*/*/*/{MANIFEST}")):
        d = man_path.parent
        man = read_manifest(d)
        repo = man.get("repo") or f"{d.parent.parent.name}/{d.parent.name}"
        rev = man.get("revision") or d.name
        for name, rec in sorted(man["files"].items()):
            match = index.get((repo, name))
            if match is None:
                for folder in man["folders"]:
                    if name.startswith(folder + "/"):
                        match = index.get((repo, folder))
            mid, q, fmt = match or (None, None, None)
            out.append(
                CachedFile(
                    path=d / name,
                    repo=repo,
                    revision=rev,
                    filename=name,
                    size=rec.get("size", 0),
                    sha256=rec.get("sha256"),
                    commit=rec.get("commit"),
                    verified_by=rec.get("verified_by", "?"),
                    model_id=mid,
                    quant=q,
                    format=fmt,
                )
            )
    return out


def verify_cache() -> list[tuple[Path, bool, str]]:
    """Re-hash every cached file against its manifest (and the bundled Gemma against its pin).

    The detail of a good file says how it was verified when it was downloaded
    (``verified_by: sha256`` / ``git-sha1`` / ``size``).
    """
    results: list[tuple[Path, bool, str]] = []
    for cf in cached_models():
        if not cf.path.is_file():
            results.append((cf.path, False, "missing"))
            continue
        size = cf.path.stat().st_size
        if size != cf.size:
            results.append((cf.path, False, f"size {size} instead of {cf.size}"))
            continue
        digest = sha256_file(cf.path)
        if cf.sha256 and digest != cf.sha256:
            results.append((cf.path, False, f"SHA-256 {digest} instead of {cf.sha256}"))
        else:
            results.append((cf.path, True, f"ok (verified_by: {cf.verified_by})"))
    from .bundled import GEMMA_FILE, GEMMA_SHA256

    g = cache_home() / "bundled" / GEMMA_FILE
    if g.is_file():
        digest = sha256_file(g)
        ok = digest == GEMMA_SHA256
        results.append((g, ok, "ok (verified_by: sha256)" if ok else f"SHA-256 {digest} instead of {GEMMA_SHA256}"))
    return results


# ------------------------------------------------------------------------------------ remove


def remove(ref: str, quant: str | None = None, format: str | None = None) -> list[Path]:
    """Delete a cached model (every cached variant of a catalog id unless quant/format narrow it).

    Partial downloads of its files are deleted too.
    """
    targets: list[tuple[str, str, str, bool]] = []  # (repo, revision, path-or-folder, is_folder)
    if ref.startswith("hf://"):
        h = parse_hf_ref(ref)
        targets.append((h.repo, h.revision, h.path.strip("/"), not h.is_file))  # as pull() treats it
    else:
        entry = get_entry(ref)
        variants = [entry.variant(quant, format)] if (quant or format) else list(entry.variants)
        for v in variants:
            if v.source == "hf" and v.repo:
                if v.folder:
                    targets.append((v.repo, v.revision or "main", v.folder.strip("/"), True))
                targets.extend((v.repo, v.revision or "main", f.name, False) for f in v.files)
    removed: list[Path] = []
    for repo, rev, path, is_folder in targets:
        d = repo_dir(repo, rev)
        with file_lock(lock_path(repo, rev, path, is_folder=is_folder)):
            if not is_folder:
                for part in partials_of(repo, rev, path):
                    part.unlink(missing_ok=True)
                    removed.append(part)
            if not (d / MANIFEST).exists():
                continue
            with manifest(d) as man:
                names = [path] if path in man["files"] else []
                folder = man["folders"].pop(path, None)
                if is_folder or folder is not None:  # also the files of a folder pull that did not finish
                    names += [n for n in man["files"] if n.startswith(path + "/")]
                for n in names:
                    man["files"].pop(n, None)
                    for part in partials_of(repo, rev, n):
                        part.unlink(missing_ok=True)
                    p = d / n
                    if p.exists():
                        p.unlink()
                        removed.append(p)
        _prune(d)
    return removed


def _prune(d: Path) -> None:
    """Remove empty folders (and a manifest with nothing left in it) up to the hub root."""
    if not d.is_dir():
        return
    man = read_manifest(d)
    if not man["files"] and not man["folders"]:
        (d / MANIFEST).unlink(missing_ok=True)
    root = hub_root()
    for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    p = d
    while p != root and root in p.parents:
        try:
            p.rmdir()
        except OSError:
            break
        p = p.parent
