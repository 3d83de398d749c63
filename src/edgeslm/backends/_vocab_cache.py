"""A model's vocabulary pieces (what llguidance's tokenizer is built from), kept on disk per model file.

Reading every token of a 262k vocabulary through llama.cpp's C functions costs about 0.5 s of the first
constrained call in each process; the cached copy loads in milliseconds. The cache is an optimisation,
never a source of truth: a file is used only when its header, count and lengths are sound and tokens
sampled across the vocabulary read the same from llama.cpp now (the caller checks those); anything else
is rebuilt. Writing is best effort (a read-only or full disk only loses the speed-up), atomic (a
temporary file renamed into place), so two processes never see half a file.

File: ``<cache>/vocab/<key>.bin`` = ``MAGIC``, the SHA-256 of the rest, the count (uint32), each
piece's length (uint32), the pieces. The key (:func:`edgeslm.store.files.file_key`) follows the model
file's identity, the count and the llama-cpp-python version.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

__all__ = ["key", "read", "sample", "write"]

MAGIC = b"EDGESLM-VOCAB-1\n"
#: A cached file larger than this is not read (a vocabulary of 1M tokens of 60 bytes fits).
MAX_BYTES = 64 * 2**20


def _folder() -> Path:
    from ..store.paths import cache_home

    return cache_home() / "vocab"


def key(path: str, n_vocab: int) -> str | None:
    """The cache key of the model file at *path* (``None`` when it cannot be read)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    from ..store.files import file_key

    return file_key(path, n_vocab, getattr(llama_cpp, "__version__", "?"))


def sample(n_vocab: int, k: int = 64) -> list[int]:
    """Token ids spread across the vocabulary (both ends included) to compare with the engine."""
    step = max(1, n_vocab // k)
    ids = set(range(min(16, n_vocab))) | set(range(max(0, n_vocab - 16), n_vocab)) | set(range(0, n_vocab, step))
    return sorted(ids)


def read(key: str, n_vocab: int) -> list[bytes] | None:
    """The cached pieces for *key*, or ``None`` (absent, damaged, or not *n_vocab* of them)."""
    try:
        f = _folder() / f"{key}.bin"
        if f.stat().st_size > MAX_BYTES:
            return None
        data = f.read_bytes()
    except OSError:
        return None
    head = len(MAGIC) + 32 + 4
    if len(data) < head or not data.startswith(MAGIC):
        return None
    if hashlib.sha256(memoryview(data)[len(MAGIC) + 32:]).digest() != data[len(MAGIC):len(MAGIC) + 32]:
        return None
    (n,) = struct.unpack_from("<I", data, len(MAGIC) + 32)
    if n != n_vocab or len(data) < head + 4 * n:
        return None
    lengths = struct.unpack_from(f"<{n}I", data, head)
    pos = head + 4 * n
    if pos + sum(lengths) != len(data):
        return None
    out: list[bytes] = []
    for ln in lengths:
        out.append(data[pos:pos + ln])
        pos += ln
    return out


def write(key: str, pieces: list[bytes]) -> None:
    """Keep *pieces* for *key* (best effort: errors only lose the speed-up)."""
    from ..store.files import write_bytes_atomic

    try:
        folder = _folder()
        folder.mkdir(parents=True, exist_ok=True)
        rest = struct.pack(f"<I{len(pieces)}I", len(pieces), *map(len, pieces)) + b"".join(pieces)
        body = MAGIC + hashlib.sha256(rest).digest() + rest
        if len(body) > MAX_BYTES:
            return
        write_bytes_atomic(folder / f"{key}.bin", body)
    except OSError:
        pass
