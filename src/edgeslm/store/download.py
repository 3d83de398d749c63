"""Download models from the Hugging Face Hub into the edgeslm cache, verified before use.

Cache layout (under :func:`~edgeslm.store.paths.cache_home`)::

    hub/<owner>/<name>/<revision>/<path in repo>      verified files, nothing else
    hub/<owner>/<name>/<revision>/.edgeslm-manifest.json
    partial/<key>-<etag>.partial                      bytes of a download in progress
    locks/<key>.lock                                  one lock per file (and per folder)
    quarantine/<time>-<name>                          downloads that failed verification

Rules: a file reaches its final path only after it has been verified (against the catalog
SHA-256, else the SHA-256 the Hub reports for LFS files, else the git blob id for small files),
written with fsync and moved there with ``os.replace``. Two processes pulling the same file end
with one copy (the second waits on the lock and finds it). A failed download removes its partial
file; an interrupted one (Ctrl-C, a killed process) leaves it so the next pull resumes it. A copy
that fails verification is quarantined and downloaded once more.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from .._errors import (
    CorruptModelError,
    DiskFullError,
    DownloadError,
    EdgeSLMError,
    GatedModelError,
    InvalidRequestError,
    ModelNotFoundError,
    OfflineError,
)
from .catalog import FileSpec, Variant, get_entry, list_entries, parse_hf_ref, pull_command, safe_revision
from .files import file_lock, sha256_file
from .paths import cache_home, offline

__all__ = [
    "CachedFile",
    "cached_models",
    "cached_path",
    "cached_variant_path",
    "pull",
    "remove",
    "verify_cache",
]

MANIFEST = ".edgeslm-manifest.json"
DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
DISK_MARGIN = 16 << 20  # keep this much free beyond the download itself
RETRY_WAIT = 1.0  # seconds before the first retry; doubles, capped at 8 s
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


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


# ------------------------------------------------------------------------------------ cache layout


def _endpoint() -> str:
    """The Hub endpoint, read from ``HF_ENDPOINT`` at call time (huggingface_hub reads it at import)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_root() -> Path:
    return cache_home() / "hub"


def _repo_dir(repo: str, revision: str) -> Path:
    if not safe_revision(revision):
        raise InvalidRequestError(
            f"{revision!r} is not a valid Hub revision",
            hint="use a branch or tag name, a commit hash, or refs/pr/<number>",
        )
    owner, name = repo.split("/", 1)
    return hub_root() / owner / name / quote(revision, safe="")


def _in_repo_path(path: object, folder: str | None = None) -> bool:
    """True for a relative path inside a repository (and inside ``folder`` when given).

    Refuses absolute paths, backslashes, NULs and empty, ``.`` or ``..`` segments.
    """
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    if (len(path) > 1 and path[1] == ":") or any(seg in ("", ".", "..") for seg in path.split("/")):
        return False
    return folder is None or path == folder or path.startswith(folder + "/")


def _unsafe_listing(what: str, path: object) -> DownloadError:
    return DownloadError(
        f"the Hub endpoint {_endpoint()} gave the path {path!r} for {what}, which is not a relative path "
        "inside it; nothing was downloaded",
        hint="HF_ENDPOINT points at a server that is not a faithful Hub mirror: unset HF_ENDPOINT "
        "or point it at a trusted mirror, then pull again",
    )


def _key(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:24]


def _lock_path(repo: str, revision: str, path: str, *, is_folder: bool) -> Path:
    """The lock of one cached file or folder; pull and remove must use the same one."""
    return cache_home() / "locks" / f"{_key(repo, revision, path.strip('/') + '/' if is_folder else path)}.lock"


def _read_manifest(d: Path) -> dict[str, Any]:
    try:
        data = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data.setdefault("files", {})
            data.setdefault("folders", {})
            return data
    except (OSError, ValueError):
        pass
    return {"files": {}, "folders": {}}


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _manifest(d: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the manifest of one repo revision under a lock."""
    d.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_home() / "locks" / f"manifest-{_key(str(d))}.lock"):
        data = _read_manifest(d)
        yield data
        _write_json_atomic(d / MANIFEST, data)


def cached_path(repo: str, revision: str, path: str, sha256: str | None = None) -> Path | None:
    """The local copy of a Hub file or folder if it is cached and complete; no network access.

    With ``sha256``, a cached file whose recorded hash differs counts as not cached.
    """
    d = _repo_dir(repo, revision)
    man = _read_manifest(d)
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


# ------------------------------------------------------------------------------------ pull


def pull(
    ref: str,
    quant: str | None = None,
    format: str | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
    token: str | None = None,
) -> Path:
    """Download a catalog model (or an ``hf://`` file or folder) into the cache; return its local path.

    Already-cached models return at once with no network access. ``token`` defaults to ``HF_TOKEN``
    or the token saved by ``huggingface-cli login``.
    """
    if ref.startswith("hf://"):
        h = parse_hf_ref(ref)
        cmd = pull_command(ref)
        cached = cached_path(h.repo, h.revision, h.path)
        if cached is not None:
            return cached
        _check_online(ref, cmd)
        with _Progress(progress) as bar:
            if h.is_file:
                return _pull_file(h.repo, h.revision, h.path, None, token=token, bar=bar, cmd=cmd)
            return _pull_folder(h.repo, h.revision, h.path, token=token, bar=bar, cmd=cmd)

    entry = get_entry(ref)
    variant = entry.variant(quant, format, device)
    if variant.source == "bundled":
        from .bundled import bundled_path

        return bundled_path(entry.id)
    cmd = pull_command(entry.id, variant.quant, variant.format if format else None)
    cached = cached_variant_path(variant)
    if cached is not None:
        return cached
    _check_online(entry.id, cmd)
    assert variant.repo is not None
    rev = variant.revision or "main"
    with _Progress(progress) as bar:
        if variant.folder:
            return _pull_folder(variant.repo, rev, variant.folder, token=token, bar=bar, cmd=cmd)
        total = sum(f.size or 0 for f in variant.files if cached_path(variant.repo, rev, f.name, f.sha256) is None)
        _check_disk(_repo_dir(variant.repo, rev), total, f"{entry.id} {variant.label}")
        paths = [
            _pull_file(variant.repo, rev, f.name, f, token=token, bar=bar, cmd=cmd, gated=variant.gated)
            for f in variant.files
        ]
    return paths[0]


def _check_online(what: str, cmd: str) -> None:
    if offline():
        raise OfflineError(
            f"{what} is not in the local cache and offline mode is on (EDGESLM_OFFLINE / HF_HUB_OFFLINE)",
            hint=f"unset EDGESLM_OFFLINE and HF_HUB_OFFLINE, then run `{cmd}`",
        )


def _check_disk(d: Path, need: int, what: str) -> None:
    probe = d
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > 0 and need + DISK_MARGIN > free:
        raise DiskFullError(
            f"not enough disk space for {what}: it needs {_fmt(need)}, {_fmt(free)} is free at {probe}",
            hint="free some space (`edgeslm rm <model>` removes cached models), or point EDGESLM_HOME at a larger disk",
        )


def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _http() -> Any:
    """The HTTP module huggingface_hub's session uses (httpx2 in huggingface-hub 2.x, httpx in 1.x)."""
    import importlib

    from huggingface_hub.utils import get_session

    return importlib.import_module(type(get_session()).__module__.split(".")[0])


def _timeout() -> Any:
    read = float(os.environ.get("EDGESLM_DOWNLOAD_TIMEOUT", "30"))
    return _http().Timeout(read, connect=min(read, 10.0))


@contextlib.contextmanager
def _hub_errors(repo: str, what: str, cmd: str, gated: bool = False) -> Iterator[None]:
    """Turn huggingface_hub / HTTP failures into edgeslm errors that say what to do."""
    from huggingface_hub import errors as hfe

    http = _http()
    try:
        yield
    except EdgeSLMError:
        raise
    except hfe.OfflineModeIsEnabled as e:
        raise OfflineError(
            f"{what} is not cached and huggingface_hub is in offline mode (HF_HUB_OFFLINE)",
            hint=f"unset HF_HUB_OFFLINE, then run `{cmd}`",
        ) from e
    except hfe.GatedRepoError as e:
        raise _gated(repo, cmd) from e
    except hfe.RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"the Hub repository {repo} was not found (or is private)",
            hint="check the repository name; for a private or gated repository log in with "
            "`huggingface-cli login` or set HF_TOKEN",
        ) from e
    except hfe.RevisionNotFoundError as e:
        raise ModelNotFoundError(f"{repo} has no revision for {what}", hint="check the revision after '@'") from e
    except hfe.EntryNotFoundError as e:
        raise ModelNotFoundError(
            f"{what} does not exist in the Hub repository {repo}",
            hint="check the file name (the catalog may be out of date: update edgeslm)",
        ) from e
    except hfe.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise _gated(repo, cmd) from e
        if status == 404:
            raise ModelNotFoundError(f"{what} was not found on the Hub (404)", hint="check the name") from e
        raise DownloadError(f"the Hub answered HTTP {status} for {what}", hint=f"try again later: `{cmd}`") from e
    except (http.ConnectError, http.ConnectTimeout) as e:
        raise OfflineError(
            f"cannot reach the Hub at {_endpoint()} to download {what}: {e}",
            hint=f"connect to the network and run `{cmd}` (HF_ENDPOINT selects a mirror)",
        ) from e
    except http.HTTPError as e:
        raise DownloadError(f"downloading {what} failed: {e}", hint=f"check the network and run `{cmd}` again") from e


def _gated(repo: str, cmd: str) -> GatedModelError:
    return GatedModelError(
        f"{repo} is a gated repository: the Hub refused access without a token that has accepted its licence",
        hint=f"accept the licence on {_endpoint()}/{repo}, then log in with `huggingface-cli login` "
        f"(or set HF_TOKEN to an access token) and run `{cmd}` again",
    )


def _pull_file(
    repo: str,
    revision: str,
    filename: str,
    spec: FileSpec | None,
    *,
    token: str | None,
    bar: _Progress,
    cmd: str,
    gated: bool = False,
    git_sha1: str | None = None,
) -> Path:
    """Download one file under its lock, verify it, and move it into place."""
    d = _repo_dir(repo, revision)
    if not _in_repo_path(filename):
        raise _unsafe_listing(repo, filename)
    final = d / filename
    key = _key(repo, revision, filename)
    with file_lock(_lock_path(repo, revision, filename, is_folder=False)):
        cached = cached_path(repo, revision, filename, spec.sha256 if spec else None)
        if cached is not None:  # another process finished it while we waited
            return cached
        from huggingface_hub import get_hf_file_metadata
        from huggingface_hub.utils import build_hf_headers

        url = f"{_endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(filename)}"
        what = f"{repo}/{filename}"
        with _hub_errors(repo, what, cmd, gated):
            meta = get_hf_file_metadata(url, token=token, timeout=float(os.environ.get("HF_HUB_ETAG_TIMEOUT", 10)))
        etag = (meta.etag or "").lower()
        hub_sha = etag if _HEX64.match(etag) else None
        git_sha1 = git_sha1 or (etag if _HEX40.match(etag) else None)
        want_sha = spec.sha256 if spec else None
        if want_sha and hub_sha and want_sha != hub_sha:
            raise DownloadError(
                f"{what} on the Hub (SHA-256 {hub_sha}) is not the file the catalog pins ({want_sha})",
                hint="the repository changed upstream: update edgeslm, "
                "or pull the file as hf://owner/repo/file to take the new one",
            )
        size = meta.size if meta.size is not None else (spec.size if spec and spec.size_exact else None)
        get_url = meta.location or url
        headers = build_hf_headers(token=token, library_name="edgeslm")
        headers["Accept-Encoding"] = "identity"
        if urlsplit(get_url)[:2] != urlsplit(url)[:2]:
            headers.pop("authorization", None)  # never send the token to a CDN

        part_dir = cache_home() / "partial"
        part_dir.mkdir(parents=True, exist_ok=True)
        tag = hub_sha or git_sha1 or (re.sub(r"[^0-9A-Za-z]", "", etag)[:64] or "noetag")
        part = part_dir / f"{key}-{tag}.partial"
        for stale in part_dir.glob(f"{key}-*.partial"):
            if stale != part:
                stale.unlink(missing_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if size is not None:
            _check_disk(part_dir, size - have, what)

        expected = want_sha or hub_sha
        try:
            for attempt in (1, 2):
                with _hub_errors(repo, what, cmd, gated):
                    digest = _download(get_url, headers, part, size, bar.task(filename, size))
                ok, reason, method = _verify(part, digest, expected, git_sha1, size)
                if ok and filename.lower().endswith(".gguf"):
                    ok, reason = _gguf_ok(part)
                if ok:
                    break
                q = _quarantine(part, filename)
                if attempt == 2:
                    raise CorruptModelError(
                        f"{what} failed verification twice ({reason}); the copies were moved to {q.parent}",
                        hint="the download is being corrupted on the way (proxy, mirror, disk?): "
                        f"check HF_ENDPOINT and the network, then run `{cmd}` again",
                    )
                bar.note(f"{filename}: {reason}; quarantined, downloading again")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, final)
            _fsync_dir(final.parent)
        except Exception:
            # A failure leaves nothing partial behind. An interrupt (KeyboardInterrupt, a killed
            # process) keeps the partial file so that the next pull resumes it.
            part.unlink(missing_ok=True)
            raise
        with _manifest(d) as man:
            man["repo"], man["revision"] = repo, revision
            man["files"][filename] = {
                "size": final.stat().st_size,
                "sha256": digest,
                "commit": meta.commit_hash,
                "verified_by": method,
                "downloaded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
        return final


def _pull_folder(repo: str, revision: str, folder: str, *, token: str | None, bar: _Progress, cmd: str) -> Path:
    """Download every file under ``folder`` (an ONNX GenAI model), then validate the folder."""
    from huggingface_hub import HfApi

    folder = folder.strip("/")
    d = _repo_dir(repo, revision)
    what = f"{repo}/{folder}"
    with file_lock(_lock_path(repo, revision, folder, is_folder=True)):
        cached = cached_path(repo, revision, folder)
        if cached is not None:
            return cached
        with _hub_errors(repo, what, cmd):
            api = HfApi(endpoint=_endpoint(), token=token, library_name="edgeslm")
            items = list(api.list_repo_tree(repo, path_in_repo=folder, recursive=True, revision=revision))
        files = [f for f in items if hasattr(f, "blob_id")]
        if not files:
            raise ModelNotFoundError(f"{what} holds no files", hint="check the folder name")
        for f in files:  # all checked before any byte is written
            if not _in_repo_path(f.path, folder):
                raise _unsafe_listing(what, f.path)
        todo = [f for f in files if cached_path(repo, revision, f.path) is None]
        _check_disk(d, sum(f.size or 0 for f in todo), what)
        for f in todo:
            lfs = getattr(f, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs else None
            size = getattr(lfs, "size", None) if lfs else f.size
            spec = FileSpec(name=f.path, size=size, sha256=sha, size_exact=size is not None)
            _pull_file(repo, revision, f.path, spec, token=token, bar=bar, cmd=cmd, git_sha1=None if lfs else f.blob_id)
        root = d / folder
        if (root / "genai_config.json").is_file():
            from .validate import validate_onnx_folder

            validate_onnx_folder(root)
        with _manifest(d) as man:
            man["folders"][folder] = {"files": sorted(f.path for f in files)}
        return root


def _download(url: str, headers: dict[str, str], part: Path, size: int | None, advance: Callable[[int], None]) -> str:
    """Fetch ``url`` into ``part`` (resuming from its current length); return the SHA-256 of the file."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    http = _http()
    session = get_session()
    retries = int(os.environ.get("EDGESLM_DOWNLOAD_RETRIES", "5"))
    h = hashlib.sha256()
    have = 0
    mode = "r+b" if part.exists() else "w+b"
    with open(part, mode) as f:
        if size is not None and f.seek(0, os.SEEK_END) > size:
            f.truncate(0)
        f.seek(0)
        while True:  # hash what an earlier, interrupted run left
            b = f.read(CHUNK)
            if not b:
                break
            h.update(b)
            have += len(b)
        advance(have)
        failures = 0
        while size is None or have < size:
            hdrs = dict(headers)
            if have:
                hdrs["Range"] = f"bytes={have}-"
            start = have
            try:
                with session.stream("GET", url, headers=hdrs, timeout=_timeout()) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        hf_raise_for_status(resp)
                    if (have and resp.status_code != 206) or not _range_ok(resp, have):
                        advance(-have)  # the server sends the whole file: start over
                        f.seek(0)
                        f.truncate()
                        h, have, start = hashlib.sha256(), 0, 0
                    if size is None:
                        total = resp.headers.get("Content-Length")
                        size = int(total) + have if total and resp.status_code in (200, 206) else None
                    for chunk in resp.iter_bytes(CHUNK):
                        if size is not None and have + len(chunk) > size:
                            raise DownloadError(
                                f"the server sent more than the {size} bytes it announced for {part.name}",
                                hint="try again later; if it persists the mirror (HF_ENDPOINT) is broken",
                            )
                        f.write(chunk)
                        h.update(chunk)
                        have += len(chunk)
                        advance(len(chunk))
                if size is None:
                    break
                if have < size:
                    raise http.RemoteProtocolError(f"connection closed after {have} of {size} bytes")
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(
                        f"the disk filled up while downloading ({e})",
                        hint="free some space or point EDGESLM_HOME at a larger disk, then pull again",
                    ) from e
                raise
            except http.TransportError:
                failures = 0 if have > start else failures + 1
                if failures > retries:
                    raise
                time.sleep(min(RETRY_WAIT * 2 ** max(failures - 1, 0), 8.0))
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def _range_ok(resp: Any, have: int) -> bool:
    if resp.status_code != 206:
        return True
    cr = resp.headers.get("Content-Range", "")
    m = re.match(r"bytes (\d+)-", cr)
    return bool(m) and int(m.group(1)) == have


def _verify(
    part: Path, digest: str, sha256: str | None, git_sha1: str | None, size: int | None
) -> tuple[bool, str, str]:
    actual = part.stat().st_size
    if size is not None and actual != size:
        return False, f"size {actual} instead of {size}", "size"
    if sha256:
        if digest != sha256:
            return False, f"SHA-256 {digest} instead of {sha256}", "sha256"
        return True, "", "sha256"
    if git_sha1:
        g = hashlib.sha1(f"blob {actual}\0".encode())
        with open(part, "rb") as f:
            for b in iter(lambda: f.read(CHUNK), b""):
                g.update(b)
        if g.hexdigest() != git_sha1:
            return False, f"git blob id {g.hexdigest()} instead of {git_sha1}", "git-sha1"
        return True, "", "git-sha1"
    return True, "", "size"


def _gguf_ok(part: Path) -> tuple[bool, str]:
    from .validate import validate_gguf

    try:
        validate_gguf(part)
    except CorruptModelError as e:
        return False, e.message
    return True, ""


def _quarantine(part: Path, filename: str) -> Path:
    qdir = cache_home() / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    base = Path(filename).name
    for old in qdir.glob(f"*-{base}"):  # keep one quarantined copy per file name: they can be large
        old.unlink(missing_ok=True)
    dest = qdir / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{base}"
    if part.exists():
        os.replace(part, dest)
    return dest


def _fsync_dir(d: Path) -> None:
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Progress:
    """A rich progress bar on stderr, or nothing when ``enabled`` is false."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._p: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._p = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def task(self, name: str, total: int | None) -> Callable[[int], None]:
        if self._p is None:
            return lambda n: None
        tid = self._p.add_task(Path(name).name, total=total)
        return lambda n: self._p.update(tid, advance=n)

    def note(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(f"[yellow]{msg}")


# ------------------------------------------------------------------------------------ inspect / remove


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
    root = hub_root()
    for man_path in sorted(root.glob(f"*/*/*/{MANIFEST}")):
        d = man_path.parent
        man = _read_manifest(d)
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
    """Re-hash every cached file against its manifest (and the bundled Gemma against its pin)."""
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
            results.append((cf.path, True, "ok"))
    from .bundled import GEMMA_FILE, GEMMA_SHA256

    g = cache_home() / "bundled" / GEMMA_FILE
    if g.is_file():
        digest = sha256_file(g)
        results.append((g, digest == GEMMA_SHA256, "ok" if digest == GEMMA_SHA256 else f"SHA-256 {digest}"))
    return results


def remove(ref: str, quant: str | None = None, format: str | None = None) -> list[Path]:
    """Delete a cached model (every cached variant of a catalog id unless quant/format narrow it)."""
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
        d = _repo_dir(repo, rev)
        if not (d / MANIFEST).exists():
            continue
        with file_lock(_lock_path(repo, rev, path, is_folder=is_folder)), _manifest(d) as man:
            names = [path] if path in man["files"] else []
            folder = man["folders"].pop(path, None)
            if folder is not None:
                names += [n for n in man["files"] if n.startswith(path + "/")]
            for n in names:
                man["files"].pop(n, None)
                p = d / n
                if p.exists():
                    p.unlink()
                    removed.append(p)
        _prune(d)
    return removed


def _prune(d: Path) -> None:
    """Remove empty folders (and a manifest with nothing left in it) up to the hub root."""
    man = _read_manifest(d)
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
