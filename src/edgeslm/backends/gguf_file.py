"""The GGUF file check: a model file is untrusted input, so its header is parsed here in pure Python
before llama.cpp sees it.

Header, metadata and tensor table only (the tensors are never read): a damaged or hostile file must
give a :class:`~edgeslm.CorruptModelError` here, not a crash in native code. It is the llama.cpp
engine's ``validate`` (:mod:`edgeslm.backends.llamacpp`); the store uses it through the registry to
verify downloads, the planner reads the model's shape from what it returns. Over ~450 lines because
the GGUF format is one unit: the type table, the reader, the metadata checks llama.cpp relies on.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .._errors import CorruptModelError, ModelNotFoundError

__all__ = ["GGUF_MAGIC", "GGUFInfo", "gguf_shape", "kv_bytes_per_token", "validate_gguf", "validate_gguf_cached"]

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # including the terminating NUL in ggml
INT64_MAX = (1 << 63) - 1
# Arrays up to this many elements are kept in the returned metadata; longer ones are summarised.
MAX_KEPT_ARRAY = 256

# ggml tensor type -> (block size, bytes per block), as ggml and the gguf package define them
# (tests/test_store_validate.py checks this copy against the installed gguf package). A type that
# is not here is looked up in the gguf package when it is installed (see _type_size).
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 40),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
    40: (64, 36),
    41: (128, 18),
}
# Ids of types ggml removed (Q4_2, Q4_3, the Q4_0_4_4 and IQ4_NL_4_4 repacked families): a file using
# them cannot be loaded by any current engine.
GGML_REMOVED_TYPES = frozenset({4, 5, 31, 32, 33, 36, 37, 38})
# ggml has about 40 tensor types. An id up to this one that no table knows is taken for a type
# newer than this edgeslm (its size is then bounded by the tensor layout, and the engine decides
# whether it can run it); a larger id is damage.
GGML_MAX_PLAUSIBLE_TYPE = 127

# GGUF value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL = range(8)
T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = range(8, 13)
_SCALAR_FMT = {
    T_UINT8: "<B",
    T_INT8: "<b",
    T_UINT16: "<H",
    T_INT16: "<h",
    T_UINT32: "<I",
    T_INT32: "<i",
    T_FLOAT32: "<f",
    T_BOOL: "<B",
    T_UINT64: "<Q",
    T_INT64: "<q",
    T_FLOAT64: "<d",
}
_TYPE_NAMES = {
    T_UINT8: "u8",
    T_INT8: "i8",
    T_UINT16: "u16",
    T_INT16: "i16",
    T_UINT32: "u32",
    T_INT32: "i32",
    T_FLOAT32: "f32",
    T_BOOL: "bool",
    T_STRING: "string",
    T_ARRAY: "array",
    T_UINT64: "u64",
    T_INT64: "i64",
    T_FLOAT64: "f64",
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass
class GGUFInfo:
    """What the header of a valid GGUF file says."""

    path: Path
    version: int
    tensor_count: int
    kv_count: int
    alignment: int
    data_offset: int
    file_size: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensor_bytes: dict[str, int] = field(default_factory=dict)  # name -> bytes of data
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # name -> ggml shape (ne0 first)
    tensor_types: dict[str, int] = field(default_factory=dict)  # name -> ggml type id

    @property
    def architecture(self) -> str | None:
        v = self.metadata.get("general.architecture")
        return v if isinstance(v, str) else None

    @property
    def chat_template(self) -> str | None:
        v = self.metadata.get("tokenizer.chat_template")
        return v if isinstance(v, str) else None

    @property
    def context_length(self) -> int | None:
        v = self.metadata.get(f"{self.architecture}.context_length")
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else None

    @property
    def name(self) -> str | None:
        v = self.metadata.get("general.name")
        return v if isinstance(v, str) else None

    @property
    def vocab_size(self) -> int | None:
        return self.array_lengths.get("tokenizer.ggml.tokens")



class _Bad(Exception):
    """Internal: a structural problem, turned into CorruptModelError with the file name."""


class _Reader:
    __slots__ = ("buf", "off", "size")

    def __init__(self, buf: Any, size: int) -> None:
        self.buf = buf
        self.size = size
        self.off = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.off + n > self.size:
            raise _Bad(f"{what} at byte {self.off} needs {n} bytes but the file ends at byte {self.size}")

    def u32(self, what: str) -> int:
        self.need(4, what)
        v = _U32.unpack_from(self.buf, self.off)[0]
        self.off += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        v = _U64.unpack_from(self.buf, self.off)[0]
        self.off += 8
        return v

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        b = self.buf[self.off : self.off + n]
        self.off += n
        return bytes(b)

    def skip_strings(self, count: int, what: str, unique: bool = False) -> None:
        """Skip ``count`` strings, checking every length (the hot loop for large vocabularies).

        With ``unique``, also refuse duplicates (llama.cpp aborts on a vocabulary with duplicates).
        """
        buf, off, size, unpack = self.buf, self.off, self.size, _U64.unpack_from
        seen: set[bytes] = set()
        add = seen.add
        for i in range(count):
            if off + 8 > size:
                self.off = off
                raise _Bad(f"{what}[{i}]: string length at byte {off} runs past the end of the file")
            n = unpack(buf, off)[0]
            start = off + 8
            off = start + n
            if off > size:
                raise _Bad(f"{what}[{i}]: string of {n} bytes runs past the end of the file")
            if unique:
                add(buf[start:off])
        if unique and len(seen) != count:
            raise _Bad(f"{what} holds duplicate entries ({count - len(seen)} duplicates)")
        self.off = off


def validate_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Parse and check a GGUF header, metadata and tensor table without reading tensor data."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ModelNotFoundError(f"cannot read {p}: {e}", hint="check the path and its permissions") from e
    if size < 24:
        raise _corrupt(p, f"the file is only {size} bytes, too small to be a GGUF model")
    with open(p, "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                return _parse_gguf(p, mm, size)
            except _Bad as e:
                raise _corrupt(p, str(e)) from None


def validate_gguf_cached(path: str | os.PathLike[str]) -> GGUFInfo:
    """:func:`validate_gguf`, remembered per file (path, size, modification time, inode) in the cache
    folder (``validated/``): a large vocabulary takes 0.1-0.2 s of Python to check on every load
    (Gemma-3's 262k tokens), the remembered result milliseconds. A changed file is checked again; a
    damaged or foreign record is ignored; recording is best effort."""
    from .._version import __version__
    from ..store.files import file_key, write_bytes_atomic
    from ..store.paths import cache_home

    p = Path(path)
    key = file_key(p, __version__)
    if key is None:
        return validate_gguf(p)
    try:
        record = cache_home() / "validated" / f"{key}.json"
    except OSError:
        return validate_gguf(p)
    names = [f.name for f in fields(GGUFInfo) if f.name != "path"]
    try:
        d = json.loads(record.read_text("utf-8"))
        if d.get("key") == key:
            d["tensor_shapes"] = {k: tuple(v) for k, v in d["tensor_shapes"].items()}
            return GGUFInfo(path=p, **{n: d[n] for n in names})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    info = validate_gguf(p)
    try:
        raw = json.dumps({"key": key, **{n: getattr(info, n) for n in names}}, allow_nan=False)
        if json.loads(raw)["metadata"] != info.metadata:  # only what JSON keeps exactly
            return info
        record.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(record, raw.encode("utf-8"))
    except (OSError, ValueError, TypeError):
        pass
    return info


def _corrupt(p: Path, why: str) -> CorruptModelError:
    return CorruptModelError(
        f"{p.name} is not a valid GGUF model: {why}",
        hint="the file is damaged or was not written by a GGUF converter; delete it and download it again "
        "(`edgeslm verify` finds damaged files in the cache, `edgeslm pull <model>` fetches a fresh copy)",
    )


def _parse_gguf(p: Path, buf: Any, size: int) -> GGUFInfo:
    r = _Reader(buf, size)
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise _Bad(f"bad magic {magic!r} (expected b'GGUF')")
    r.off = 4
    version = r.u32("version")
    if version not in (2, 3):
        if version == 1:
            raise _Bad("GGUF version 1 is no longer supported; convert the model again with a current llama.cpp")
        if struct.unpack("<I", struct.pack(">I", version))[0] in (2, 3):
            raise _Bad("the file is big-endian GGUF, which this machine cannot load")
        raise _Bad(f"unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    # Each tensor info takes at least 24 bytes, each key/value at least 13: reject absurd counts early.
    if n_tensors * 24 > size or n_tensors > INT64_MAX // 512:
        raise _Bad(f"tensor count {n_tensors} cannot fit in a file of {size} bytes")
    if n_kv * 13 > size:
        raise _Bad(f"metadata count {n_kv} cannot fit in a file of {size} bytes")

    metadata: dict[str, Any] = {}
    array_lengths: dict[str, int] = {}
    array_types: dict[str, int] = {}
    types: dict[str, int] = {}
    for i in range(n_kv):
        key_b = r.raw_string(f"key #{i}")
        key = key_b.decode("utf-8", errors="replace")
        if not key_b:
            raise _Bad(f"metadata key #{i} is empty")
        if key in metadata:
            raise _Bad(f"duplicate metadata key {key!r}")
        vtype = r.u32(f"type of {key!r}")
        types[key] = vtype
        if vtype == T_ARRAY:
            etype = r.u32(f"element type of {key!r}")
            count = r.u64(f"length of {key!r}")
            array_types[key] = etype
            array_lengths[key] = count
            metadata[key] = _read_array(r, key, etype, count)
        else:
            metadata[key] = _read_value(r, key, vtype)

    # Keys that llama.cpp reads with type assertions (a wrong type aborts the process there).
    alignment = GGUF_DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        if types["general.alignment"] != T_UINT32:
            raise _Bad("general.alignment must be a u32")
        alignment = metadata["general.alignment"]
        if alignment <= 0 or alignment & (alignment - 1):
            raise _Bad(f"general.alignment {alignment} is not a power of two")
    _check_known_keys(metadata, types, array_types, array_lengths)

    # Tensor infos
    names: set[str] = set()
    tensors: list[tuple[str, int, int | None]] = []  # (name, offset, nbytes; None for a type no table knows)
    shapes: dict[str, tuple[int, ...]] = {}
    ttypes: dict[str, int] = {}
    for i in range(n_tensors):
        name_b = r.raw_string(f"name of tensor #{i}")
        name = name_b.decode("utf-8", errors="replace")
        if len(name_b) >= GGML_MAX_NAME:
            raise _Bad(f"tensor #{i} name is {len(name_b)} bytes long (limit {GGML_MAX_NAME - 1})")
        if name in names:
            raise _Bad(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = r.u32(f"dimension count of tensor {name!r}")
        if n_dims > GGML_MAX_DIMS:
            raise _Bad(f"tensor {name!r} has {n_dims} dimensions (at most {GGML_MAX_DIMS})")
        r.need(8 * n_dims, f"shape of tensor {name!r}")
        dims = struct.unpack_from(f"<{n_dims}Q", buf, r.off)
        r.off += 8 * n_dims
        n_elems = 1
        for d in dims:
            if d <= 0 or d > INT64_MAX:
                raise _Bad(f"tensor {name!r} has an invalid dimension {d}")
            n_elems *= d
            if n_elems > INT64_MAX:
                raise _Bad(f"tensor {name!r} shape {list(dims)} overflows")
        ttype = r.u32(f"type of tensor {name!r}")
        sizes = _type_size(ttype)
        nbytes: int | None = None
        if sizes is not None:
            block, type_size = sizes
            if dims and dims[0] % block:
                raise _Bad(f"tensor {name!r}: first dimension {dims[0]} is not a multiple of block size {block}")
            nbytes = n_elems // block * type_size
        elif ttype in GGML_REMOVED_TYPES:
            raise _Bad(f"tensor {name!r} has unknown type {ttype} (a type ggml removed)")
        elif ttype > GGML_MAX_PLAUSIBLE_TYPE:
            raise _Bad(f"tensor {name!r} has unknown type {ttype}")
        offset = r.u64(f"offset of tensor {name!r}")
        tensors.append((name, offset, nbytes))
        shapes[name] = tuple(int(d) for d in dims)
        ttypes[name] = ttype

    data_offset = (r.off + alignment - 1) // alignment * alignment
    if tensors and data_offset > size:
        raise _Bad(f"tensor data should start at byte {data_offset} but the file has {size} bytes")
    # Where the next tensor must start; None after a tensor of unknown size (whose data ends where
    # the next one starts, checked to leave it room).
    expected: int | None = 0
    for i, (name, offset, nbytes) in enumerate(tensors):
        if offset % alignment:
            raise _Bad(f"tensor {name!r} offset {offset} is not aligned to {alignment} bytes")
        if expected is not None and offset != expected:
            raise _Bad(f"tensor {name!r} has offset {offset}, expected {expected}")
        known = nbytes is not None
        if nbytes is None:  # a type no table knows: its data runs to the next tensor (or the end of the file)
            nbytes = (tensors[i + 1][1] if i + 1 < len(tensors) else size - data_offset) - offset
            if nbytes <= 0:
                raise _Bad(f"tensor {name!r} has no room for its data at offset {offset}")
            tensors[i] = (name, offset, nbytes)
        end = data_offset + offset + nbytes
        if end > size:
            raise _Bad(f"tensor {name!r} data ends at byte {end} but the file has {size} bytes (truncated download?)")
        expected = offset + (nbytes + alignment - 1) // alignment * alignment if known else None

    return GGUFInfo(
        path=p,
        version=version,
        tensor_count=n_tensors,
        kv_count=n_kv,
        alignment=alignment,
        data_offset=data_offset,
        file_size=size,
        metadata=metadata,
        array_lengths=array_lengths,
        tensor_bytes={name: nbytes for name, _, nbytes in tensors},
        tensor_shapes=shapes,
        tensor_types=ttypes,
    )


def _type_size(ttype: int) -> tuple[int, int] | None:
    """(block size, bytes per block) of a ggml tensor type: edgeslm's table, else the gguf package's."""
    known = GGML_TYPE_SIZES.get(ttype)
    if known is not None or ttype in GGML_REMOVED_TYPES:
        return known
    return _gguf_package_type_sizes().get(ttype)


@functools.lru_cache(maxsize=1)
def _gguf_package_type_sizes() -> dict[int, tuple[int, int]]:
    """``gguf.constants.GGML_QUANT_SIZES`` when the gguf package is installed (it may be newer than edgeslm)."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except Exception:  # not installed, or broken: edgeslm's own table is all there is
        return {}
    out: dict[int, tuple[int, int]] = {}
    for t, (block, type_size) in GGML_QUANT_SIZES.items():
        if int(block) > 0 and int(type_size) > 0:
            out[int(t)] = (int(block), int(type_size))
    return out


def _read_value(r: _Reader, key: str, vtype: int) -> Any:
    if vtype == T_STRING:
        return r.raw_string(f"value of {key!r}").decode("utf-8", errors="replace")
    fmt = _SCALAR_FMT.get(vtype)
    if fmt is None:
        raise _Bad(f"metadata {key!r} has unknown value type {vtype}")
    n = struct.calcsize(fmt)
    r.need(n, f"value of {key!r}")
    v = struct.unpack_from(fmt, r.buf, r.off)[0]
    r.off += n
    if vtype == T_BOOL:
        if v > 1:
            raise _Bad(f"metadata {key!r} is a bool with value {v}")
        return bool(v)
    return v


def _read_array(r: _Reader, key: str, etype: int, count: int) -> Any:
    if etype == T_ARRAY:
        raise _Bad(f"metadata {key!r} is a nested array, which GGUF readers do not support")
    if etype == T_STRING:
        if count * 8 > r.size - r.off:
            raise _Bad(f"array {key!r} claims {count} strings, more than the file can hold")
        unique = key == "tokenizer.ggml.tokens"
        if count <= MAX_KEPT_ARRAY:
            raw = [r.raw_string(f"{key}[{i}]") for i in range(count)]
            if unique and len(set(raw)) != count:
                raise _Bad(f"{key} holds duplicate entries")
            return [b.decode("utf-8", errors="replace") for b in raw]
        r.skip_strings(count, key, unique)
        return None
    fmt = _SCALAR_FMT.get(etype)
    if fmt is None:
        raise _Bad(f"array {key!r} has unknown element type {etype}")
    n = struct.calcsize(fmt)
    r.need(count * n, f"array {key!r} of {count} elements")
    if count <= MAX_KEPT_ARRAY:
        vals = list(struct.unpack_from(f"<{count}{fmt[1]}", r.buf, r.off))
        r.off += count * n
        return [bool(v) for v in vals] if etype == T_BOOL else vals
    r.off += count * n
    return None


_INT_TYPES = {T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_UINT64, T_INT64}


def _check_known_keys(
    md: dict[str, Any], types: dict[str, int], array_types: dict[str, int], array_lengths: dict[str, int]
) -> None:
    """Check the keys llama.cpp reads with hard type assertions or unchecked indexing."""
    arch = md.get("general.architecture")
    split_no = md.get("split.no")
    if isinstance(split_no, int) and split_no > 0 and "general.architecture" not in md:
        return  # a later shard of a split model: its metadata lives in the first shard
    if "general.architecture" not in md:
        raise _Bad("the general.architecture key is missing, so no engine knows how to run this model")
    if types["general.architecture"] != T_STRING or not arch:
        raise _Bad("general.architecture must be a non-empty string")
    if "tokenizer.ggml.tokens" in md:
        if types["tokenizer.ggml.tokens"] != T_ARRAY or array_types.get("tokenizer.ggml.tokens") != T_STRING:
            raise _Bad("tokenizer.ggml.tokens must be an array of strings")
        n_vocab = array_lengths["tokenizer.ggml.tokens"]
        if n_vocab == 0:
            raise _Bad("tokenizer.ggml.tokens is empty")
        for k, t in (("tokenizer.ggml.scores", T_FLOAT32), ("tokenizer.ggml.token_type", T_INT32)):
            if k in md:
                if types[k] != T_ARRAY or array_types.get(k) != t:
                    raise _Bad(f"{k} must be an array of {_TYPE_NAMES[t]}")
                if array_lengths[k] != n_vocab:
                    raise _Bad(f"{k} has {array_lengths[k]} entries but the vocabulary has {n_vocab} tokens")
        if "tokenizer.ggml.merges" in md and (
            types["tokenizer.ggml.merges"] != T_ARRAY or array_types.get("tokenizer.ggml.merges") != T_STRING
        ):
            raise _Bad("tokenizer.ggml.merges must be an array of strings")
        for k, v in md.items():
            if k.startswith("tokenizer.ggml.") and k.endswith("_token_id"):
                if types[k] not in _INT_TYPES:
                    raise _Bad(f"{k} must be an integer")
                if not (-1 <= v < n_vocab):
                    raise _Bad(f"{k} = {v} is outside the vocabulary of {n_vocab} tokens")
    if "tokenizer.chat_template" in md and types["tokenizer.chat_template"] != T_STRING:
        raise _Bad("tokenizer.chat_template must be a string")
    if isinstance(arch, str):
        for suffix in ("context_length", "block_count", "embedding_length"):
            k = f"{arch}.{suffix}"
            if k in md:
                if types[k] not in _INT_TYPES:
                    raise _Bad(f"{k} must be an integer")
                if md[k] <= 0:
                    raise _Bad(f"{k} = {md[k]} must be positive")


# ------------------------------------------------------------------------------------ the model's shape


def kv_bytes_per_token(num: Callable[[str], int]) -> int:
    """KV cache bytes per token of context (f16 K and V, every layer) from a GGUF header's
    architecture keys: ``num("block_count")``, ``num("attention.head_count_kv")``... (0: absent)."""
    layers, heads, embd = num("block_count"), num("attention.head_count"), num("embedding_length")
    kv_heads = num("attention.head_count_kv") or heads
    k_len = num("attention.key_length") or (embd // heads if heads else 0)
    v_len = num("attention.value_length") or k_len
    return layers * kv_heads * (k_len + v_len) * 2


def gguf_shape(info: Any, size: int = 0) -> Any:
    """The planner's :class:`~edgeslm.runtime.planner.ModelShape` from a parsed header: real tensor
    sizes per layer; ``None`` when the header does not say how many layers there are."""
    from ..runtime.planner import ModelShape

    meta = getattr(info, "metadata", None) or {}
    arch = meta.get("general.architecture")
    n = meta.get(f"{arch}.block_count")
    sizes = getattr(info, "tensor_bytes", None) or {}
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0 or not sizes:
        return None
    layers = [0] * n
    other = 0
    for name, nbytes in sizes.items():
        parts = name.split(".")
        if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) < n:
            layers[int(parts[1])] += nbytes
        else:
            other += nbytes

    def num(key: str) -> int:
        v = meta.get(f"{arch}.{key}")
        if isinstance(v, list) and v:
            v = max(x for x in v if isinstance(x, int))
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else 0

    ctx = num("context_length") or None
    return ModelShape(n, tuple(layers), other, kv_bytes_per_token(num), ctx, "gguf")
