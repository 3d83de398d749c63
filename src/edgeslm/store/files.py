"""Small file helpers: hashing, atomic writes, inter-process locks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .._errors import DownloadError

__all__ = ["LockTimeoutError", "file_lock", "sha256_file"]


class LockTimeoutError(DownloadError, TimeoutError):
    """Another process held a model's lock for longer than the timeout (also a TimeoutError)."""


def _lock_timeout(p: Path, timeout: float) -> LockTimeoutError:
    return LockTimeoutError(
        f"timed out after {timeout:.0f} s waiting for the lock {p}",
        hint="another edgeslm process is downloading or removing the same model: wait for it to finish and "
        f"try again; if no other edgeslm process is running, delete the stale lock file {p}",
    )


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float = 3600.0) -> Iterator[None]:
    """Exclusive lock across processes (``fcntl.flock``; ``msvcrt`` on Windows).

    Raises :class:`LockTimeoutError` when the lock is still held after ``timeout`` seconds.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        if os.name == "nt":  # pragma: no cover - exercised on Windows only
            import msvcrt

            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise _lock_timeout(p, timeout) from None
                    time.sleep(0.1)
        else:
            import fcntl

            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise _lock_timeout(p, timeout) from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
