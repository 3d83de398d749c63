"""Small file helpers: hashing, atomic writes, inter-process locks (``filelock``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._errors import DownloadError

__all__ = ["LockTimeoutError", "file_key", "file_lock", "fsync_dir", "git_blob_sha1", "sha256_file",
           "write_bytes_atomic", "write_json_atomic"]

CHUNK = 1 << 20


class LockTimeoutError(DownloadError, TimeoutError):
    """Another process held a model's lock for longer than the timeout (also a TimeoutError)."""


def sha256_file(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


def git_blob_sha1(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    """The git blob id of a file (what the Hub reports as the ETag of a small, non-LFS file)."""
    h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float = 3600.0) -> Iterator[None]:
    """Exclusive lock across processes and threads (:class:`filelock.FileLock`).

    Raises :class:`LockTimeoutError` when the lock is still held after ``timeout`` seconds.
    """
    import filelock

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(p, timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeoutError(
            f"timed out after {timeout:.0f} s waiting for the lock {p}",
            hint="another edgeslm process is downloading or removing the same model: wait for it to finish and "
            f"try again; if no other edgeslm process is running, delete the stale lock file {p}",
        ) from None
    try:
        yield
    finally:
        lock.release()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file, fsync it, and move it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def file_key(path: str | os.PathLike[str], *extra: object) -> str | None:
    """A key for what is remembered about the file at *path* (and *extra*): it changes when the file
    is replaced or rewritten (device, inode, size, modification time), not when it is renamed (a
    download checked as ``x.part`` and then moved into place keeps what was learnt of it, rather than
    leaving a record no path will ask for). ``None`` when the file cannot be read."""
    try:
        st = Path(path).resolve().stat()
    except (OSError, RuntimeError):
        return None
    text = "\0".join(map(str, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, *extra)))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write *data* to a unique temporary file beside *path* and move it over *path* (readers see
    the old file or the new one, never half of one); the temporary file is removed on failure."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def fsync_dir(d: Path) -> None:
    """Make a rename inside ``d`` durable (no-op on Windows)."""
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
