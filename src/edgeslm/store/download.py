"""Download models from the Hugging Face Hub into the edgeslm cache, verified before use.

The transfer is huggingface_hub's: ``get_hf_file_metadata`` (the HEAD request: ETag / X-Linked-Etag,
size, commit, Xet headers, Hub errors), then Xet (``hf_xet``) when the Hub offers it, else
``http_get`` (Range requests, retries). Around it edgeslm adds the steps a model cache needs:

1. one ``filelock`` per file, so two processes pulling the same model end with one copy;
2. a partial file kept under ``partial/`` (named by the ETag) when a transfer fails or the process
   is killed, so the next pull resumes it instead of starting again; Xet writes into it in order,
   so either transport can continue what the other started;
3. verification against the catalog's SHA-256, else the SHA-256 the Hub reports for LFS files,
   else the git blob id of small files, else the size; GGUF files get their header checked;
4. quarantine of a copy that fails, and one more download over plain HTTP;
5. ``os.replace`` into ``hub/`` and a manifest entry: nothing unverified ever appears there.

``hf_hub_download`` itself is not used: since huggingface_hub 1.18 it downloads into a
process-unique temporary file that it deletes when the transfer fails (huggingface_hub#4228), so a
multi-GB download that breaks restarts from zero (huggingface_hub#4196).

Over ~450 lines on purpose: one transfer protocol: listing, resume, verification, quarantine, locks
and the progress bar work on the same partial files.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import importlib.util
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._errors import (
    CorruptModelError,
    DiskFullError,
    DownloadError,
    EdgeSLMError,
    GatedModelError,
    ModelNotFoundError,
    OfflineError,
)
from .cache import (
    cached_path,
    cached_variant_path,
    in_repo_path,
    key,
    lock_path,
    manifest,
    partial_dir,
    partials_of,
    quarantine,
    repo_dir,
)
from .catalog import FileSpec, get_entry, parse_hf_ref, pull_command
from .files import file_lock, fsync_dir, git_blob_sha1, sha256_file
from .paths import offline

__all__ = ["pull"]

DEFAULT_ENDPOINT = "https://huggingface.co"
DISK_MARGIN = 16 << 20  # keep this much free beyond the download itself
RETRY_WAIT = 1.0  # seconds before retrying a reset connection; doubles, capped at 8 s
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def _endpoint() -> str:
    """The Hub endpoint, read from ``HF_ENDPOINT`` at call time (huggingface_hub reads it at import)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _unsafe_listing(what: str, path: object) -> DownloadError:
    return DownloadError(
        f"the Hub endpoint {_endpoint()} gave the path {path!r} for {what}, which is not a relative path "
        "inside it; nothing was downloaded",
        hint="HF_ENDPOINT points at a server that is not a faithful Hub mirror: unset HF_ENDPOINT "
        "or point it at a trusted mirror, then pull again",
    )


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

    Already-cached models return at once with no network access. An interrupted download resumes
    where it stopped on the next pull. ``token`` defaults to ``HF_TOKEN`` or the token saved by
    ``huggingface-cli login``.
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
        todo = [f for f in variant.files if cached_path(variant.repo, rev, f.name, f.sha256) is None]
        _check_disk(repo_dir(variant.repo, rev), sum(f.size or 0 for f in todo), f"{entry.id} {variant.label}")
        paths = [_pull_file(variant.repo, rev, f.name, f, token=token, bar=bar, cmd=cmd) for f in variant.files]
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


def _disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def _hub_errors(repo: str, what: str, cmd: str) -> Iterator[None]:
    """Turn huggingface_hub / HTTP / disk failures into edgeslm errors that say what to do."""
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
        raise DownloadError(
            f"the Hub answered HTTP {status} for {what}", hint=f"try again later: `{cmd}` resumes the download"
        ) from e
    except (http.ConnectError, http.ConnectTimeout) as e:
        raise OfflineError(
            f"cannot reach the Hub at {_endpoint()} to download {what}: {e}",
            hint=f"connect to the network and run `{cmd}` (HF_ENDPOINT selects a mirror)",
        ) from e
    except http.HTTPError as e:
        raise DownloadError(
            f"downloading {what} failed: {e}",
            hint=f"check the network and run `{cmd}` again: it resumes where this one stopped",
        ) from e
    except OSError as e:
        if _disk_full(e):
            raise DiskFullError(
                f"the disk filled up while downloading {what} ({e})",
                hint=f"free some space or point EDGESLM_HOME at a larger disk, then run `{cmd}` to resume",
            ) from e
        raise DownloadError(
            f"downloading {what} failed: {e}", hint=f"check the cache folder (EDGESLM_HOME) and run `{cmd}` again"
        ) from e


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
    git_sha1: str | None = None,
) -> Path:
    """Download one file under its lock (resuming a partial), verify it, and move it into place."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    from .._version import __version__

    d = repo_dir(repo, revision)
    if not in_repo_path(filename):
        raise _unsafe_listing(repo, filename)
    final = d / filename
    what = f"{repo}/{filename}"
    with file_lock(lock_path(repo, revision, filename, is_folder=False)):
        cached = cached_path(repo, revision, filename, spec.sha256 if spec else None)
        if cached is not None:  # another process finished it while we waited
            return cached
        url = hf_hub_url(repo, filename, revision=revision, endpoint=_endpoint())
        with _hub_errors(repo, what, cmd):
            meta = get_hf_file_metadata(
                url,
                token=token,
                timeout=float(os.environ.get("HF_HUB_ETAG_TIMEOUT", 10)),
                library_name="edgeslm",
                library_version=__version__,
                endpoint=_endpoint(),
            )
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
        hub_headers = build_hf_headers(token=token, library_name="edgeslm", library_version=__version__)
        hub_headers["Accept-Encoding"] = "identity"
        get_headers = hub_headers
        if urlsplit(get_url)[:2] != urlsplit(url)[:2]:  # never send the token to a CDN
            get_headers = {k: v for k, v in hub_headers.items() if k.lower() != "authorization"}

        # The partial is named by the ETag: a partial of an older version of the file is dropped.
        tag = hub_sha or git_sha1 or (re.sub(r"[^0-9A-Za-z]", "", etag)[:64] or "noetag")
        part = partial_dir() / f"{key(repo, revision, filename)}-{tag}.incomplete"
        part.parent.mkdir(parents=True, exist_ok=True)
        for stale in partials_of(repo, revision, filename):
            if stale != part:
                stale.unlink(missing_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:  # not a prefix of this file
            part.unlink()
            have = 0
        if size is not None:
            _check_disk(part.parent, size - have, what)

        expected = want_sha or hub_sha
        for attempt in (1, 2):
            with _hub_errors(repo, what, cmd):
                # a second attempt, after a copy failed verification, goes over plain HTTP
                xet = meta.xet_file_data if attempt == 1 else None
                _fetch(get_url, get_headers, part, size, xet, hub_headers, bar, filename)
            ok, reason, method, digest = _verify(part, expected, git_sha1, size)
            if ok:
                ok, reason = _engine_check(part, filename)
            if ok:
                break
            q = quarantine(part, filename)
            if attempt == 2:
                raise CorruptModelError(
                    f"{what} failed verification twice ({reason}); the copies were moved to {q.parent}",
                    hint="the download is being corrupted on the way (proxy, mirror, disk?): "
                    f"check HF_ENDPOINT and the network, then run `{cmd}` again",
                )
            bar.note(f"{filename}: {reason}; quarantined, downloading again")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        fsync_dir(final.parent)
        with manifest(d) as man:
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
    d = repo_dir(repo, revision)
    what = f"{repo}/{folder}"
    with file_lock(lock_path(repo, revision, folder, is_folder=True)):
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
            if not in_repo_path(f.path, folder):
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
        _engine_check_folder(root)
        with manifest(d) as man:
            man["folders"][folder] = {"files": sorted(f.path for f in files)}
        return root


# ------------------------------------------------------------------------------------ transfer


def _fetch(
    url: str,
    headers: dict[str, str],
    part: Path,
    size: int | None,
    xet: Any,
    hub_headers: dict[str, str],
    bar: _Progress,
    name: str,
) -> None:
    """Complete ``part`` (a prefix of the file, possibly empty) from the Hub: Xet when offered, else HTTP.

    ``headers`` go with the GET of ``url`` (no token when it is a CDN); ``hub_headers`` (with the
    token) ask the Hub for a Xet access token.
    """
    if not part.exists():
        part.touch()
    if size is not None and part.stat().st_size == size:
        return
    if xet is not None and size is not None and _xet_enabled():
        try:
            _xet_fetch(xet, hub_headers, part, size, bar, name)
            return
        except (KeyboardInterrupt, EdgeSLMError):
            raise
        except Exception as e:  # Xet unavailable or failing: HTTP continues from the same prefix
            if _disk_full(e):
                raise
            bar.note(f"{name}: Xet transfer failed ({type(e).__name__}: {e}); continuing over HTTP")
    _http_fetch(url, headers, part, size, bar, name)


def _http_fetch(url: str, headers: dict[str, str], part: Path, size: int | None, bar: _Progress, name: str) -> None:
    """huggingface_hub's ``http_get`` appending to ``part`` from its current length (a Range request).

    ``http_get`` retries timeouts, refused connections and early closes itself, and gives up after
    five tries without new data; a reset connection it leaves to the caller. Here another round
    starts whenever the partial grew, and a reset is retried ``EDGESLM_DOWNLOAD_RETRIES`` times.
    """
    from huggingface_hub import errors as hfe
    from huggingface_hub.file_download import http_get

    http = _http()
    retried_by_http_get = (http.ConnectError, http.TimeoutException, http.RemoteProtocolError)
    retries = int(os.environ.get("EDGESLM_DOWNLOAD_RETRIES", "5"))
    stalls = 0
    while True:
        have = part.stat().st_size
        try:
            with open(part, "r+b") as f:
                f.seek(have)
                http_get(
                    url,
                    f,
                    resume_size=have,
                    headers=headers,
                    expected_size=size,
                    displayed_filename=name,
                    tqdm_class=bar.tqdm_class(name),
                )
            return
        except Exception as e:
            if not isinstance(e, (http.TransportError, OSError)) or isinstance(e, hfe.HfHubHTTPError) or _disk_full(e):
                raise
            now = part.stat().st_size
            if now > have and (size is None or now < size):  # bytes arrived: go on from there
                stalls = 0
                continue
            if isinstance(e, (OSError, *retried_by_http_get)):
                raise
            stalls += 1
            if stalls > retries:
                raise
            time.sleep(min(RETRY_WAIT * 2 ** (stalls - 1), 8.0))


def _xet_enabled() -> bool:
    if os.environ.get("HF_HUB_DISABLE_XET", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    return importlib.util.find_spec("hf_xet") is not None


def _xet_fetch(xet: Any, headers: dict[str, str], part: Path, size: int, bar: _Progress, name: str) -> None:
    """Append the rest of the file to ``part`` from Xet storage, in order, so it stays a resumable prefix."""
    have = part.stat().st_size
    advance = bar.task(name, size, have)
    with open(part, "r+b") as f:
        f.seek(have)
        for chunk in _xet_stream(xet, headers, size, have):
            if f.tell() + len(chunk) > size:
                raise DownloadError(
                    f"Xet storage sent more than the {size} bytes the Hub announced for {name}",
                    hint="try again later; HF_HUB_DISABLE_XET=1 downloads over plain HTTP",
                )
            f.write(chunk)
            advance(len(chunk))
    if part.stat().st_size != size:
        raise DownloadError(
            f"the Xet stream of {name} ended after {part.stat().st_size} of {size} bytes",
            hint="pull again: the download resumes where it stopped",
        )


def _xet_stream(xet: Any, headers: dict[str, str], size: int, start: int) -> Iterator[bytes]:
    """The bytes of a Xet-stored file from ``start`` to its end, in order (hf_xet's download stream).

    The connection set-up is huggingface_hub's own (the one ``hf_hub_download`` uses), so a token,
    mirror or proxy that works there works here.
    """
    from hf_xet import XetFileInfo
    from huggingface_hub.utils._xet import get_xet_session, refresh_xet_connection_info, xet_headers_without_auth

    conn = refresh_xet_connection_info(file_data=xet, headers=headers)
    group = get_xet_session().new_download_stream_group(
        endpoint=conn.endpoint,
        token=conn.access_token,
        token_expiry_unix_secs=conn.expiration_unix_epoch,
        token_refresh_url=xet.refresh_route,
        token_refresh_headers=headers,
        custom_headers=xet_headers_without_auth(headers),
    )
    stream = group.download_stream(XetFileInfo(xet.file_hash, size), start=start or None)
    try:
        yield from stream
    except BaseException:
        with contextlib.suppress(Exception):
            stream.cancel()
            group.abort()
        raise
    with contextlib.suppress(Exception):
        group.finish()


# ------------------------------------------------------------------------------------ verification


def _verify(part: Path, sha256: str | None, git_sha1: str | None, size: int | None) -> tuple[bool, str, str, str]:
    """(ok, why not, verified_by, SHA-256 of the file) for a complete download."""
    actual = part.stat().st_size
    digest = sha256_file(part)
    if size is not None and actual != size:
        return False, f"size {actual} instead of {size}", "size", digest
    if sha256:
        if digest != sha256:
            return False, f"SHA-256 {digest} instead of {sha256}", "sha256", digest
        return True, "", "sha256", digest
    if git_sha1:
        blob = git_blob_sha1(part)
        if blob != git_sha1:
            return False, f"git blob id {blob} instead of {git_sha1}", "git-sha1", digest
        return True, "", "git-sha1", digest
    return True, "", "size", digest


def _engine_check_folder(root: Path) -> None:
    """The check of the engine that opens the folder *root* (an ONNX GenAI folder), if one does."""
    from ..backends.registry import backend_for_path

    try:
        spec, opened = backend_for_path(root)
    except EdgeSLMError:  # a folder no engine opens (an adapter, a tokenizer): nothing to check
        return
    if spec.validate is not None:
        spec.validate(opened)


def _engine_check(part: Path, filename: str) -> tuple[bool, str]:
    """The header check of the engine whose files end like *filename* (a ``.gguf``), if any."""
    from ..backends.registry import backend_for_name

    spec = backend_for_name(filename)
    if spec is None or spec.validate is None:
        return True, ""
    try:
        spec.validate(part)
    except CorruptModelError as e:
        return False, e.message
    return True, ""


# ------------------------------------------------------------------------------------ progress


class _Progress:
    """A rich progress bar on stderr, or nothing when ``enabled`` is false."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._p: Any = None
        self._tasks: dict[str, Any] = {}

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

    def task(self, name: str, total: int | None, done: int = 0) -> Callable[[int], None]:
        """A callable that advances the bar of ``name`` (one bar per file, ``done`` bytes already there)."""
        if self._p is not None:
            tid = self._tasks.get(name)
            if tid is None:
                tid = self._tasks[name] = self._p.add_task(Path(name).name, total=total)
            self._p.update(tid, total=total, completed=done)
        return lambda n: self.advanced(name, n)

    def advanced(self, name: str, n: int) -> None:
        """``n`` more bytes of ``name`` are on disk (negative when a server restarts the file)."""
        if self._p is not None:
            self._p.update(self._tasks[name], advance=n)

    def tqdm_class(self, name: str) -> Callable[..., Any]:
        """A stand-in for the ``tqdm_class`` huggingface_hub's ``http_get`` draws its bar with."""
        progress = self

        class _Bar:
            def __init__(self, *, total: int | None = None, initial: int = 0, **_: object) -> None:
                self._advance = progress.task(name, total, initial)

            def update(self, n: int | float | None = 1) -> None:
                self._advance(int(n or 0))

            def close(self) -> None:
                pass

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

        return _Bar

    def note(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(f"[yellow]{msg}")
