"""Check a model file before any engine sees it.

A GGUF file is parsed in pure Python, header and metadata only (the tensors are never read):
a damaged or hostile file must give a :class:`~edgeslm.CorruptModelError` here, not a crash in
native code. An ONNX GenAI folder is checked for a readable ``genai_config.json``, the files it
names, and external-data paths that stay inside the folder (found by walking the protobuf wire
format of each ``.onnx`` file, without the ``onnx`` package).
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .._errors import CorruptModelError, ModelNotFoundError

__all__ = ["GGUFInfo", "ONNXInfo", "validate_gguf", "validate_gguf_cached", "validate_model_file",
           "validate_onnx_folder"]

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


@dataclass
class ONNXInfo:
    """What a valid ONNX GenAI folder holds."""

    path: Path
    config: dict[str, Any]
    model_files: list[str]
    external_data: list[str]

    @property
    def context_length(self) -> int | None:
        v = self.config.get("model", {}).get("context_length")
        return v if isinstance(v, int) else None

    @property
    def model_type(self) -> str | None:
        v = self.config.get("model", {}).get("type")
        return v if isinstance(v, str) else None


def validate_model_file(path: str | os.PathLike[str]) -> GGUFInfo | ONNXInfo:
    """Check a ``.gguf`` file or an ONNX GenAI folder; raise CorruptModelError if it is damaged."""
    p = Path(path)
    if p.is_dir():
        return validate_onnx_folder(p)
    if not p.is_file():
        raise ModelNotFoundError(f"no model file at {p}", hint="check the path, or pull the model first")
    with open(p, "rb") as f:
        head = f.read(4)
    if head == GGUF_MAGIC or p.suffix.lower() == ".gguf":
        return validate_gguf(p)
    if p.name == "genai_config.json":
        return validate_onnx_folder(p.parent)
    raise CorruptModelError(
        f"{p} is neither a GGUF file nor an ONNX GenAI folder",
        hint="pass a .gguf file, a folder holding genai_config.json, or a catalog id",
    )


# --------------------------------------------------------------------------------------------- GGUF


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
    from .files import file_key, write_bytes_atomic
    from .paths import cache_home

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


# --------------------------------------------------------------------------------------------- ONNX


def validate_onnx_folder(path: str | os.PathLike[str]) -> ONNXInfo:
    """Check an ONNX GenAI folder: config, the files it names, external data kept inside the folder."""
    root = Path(path)
    cfg_path = root / "genai_config.json"
    hint = "download the folder again with `edgeslm pull`, or re-export it with onnxruntime_genai.models.builder"
    if not cfg_path.is_file():
        raise ModelNotFoundError(
            f"{root} has no genai_config.json, so it is not an ONNX GenAI model folder",
            hint="pass a .gguf file or a folder written by onnxruntime_genai.models.builder",
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptModelError(f"{cfg_path} cannot be parsed: {e}", hint=hint) from e
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CorruptModelError(f"{cfg_path} has no 'model' section", hint=hint)

    referenced: list[str] = []
    collect_filenames(config["model"], referenced)
    if not any(f.endswith(".onnx") for f in referenced):
        raise CorruptModelError(f"{cfg_path} names no .onnx model file", hint=hint)
    model_files: list[str] = []
    external: list[str] = []
    for name in referenced:
        target = _inside(root, name, f"genai_config.json names {name!r}", hint)
        if not target.is_file():
            raise CorruptModelError(f"{root.name}: genai_config.json names {name!r}, which is missing", hint=hint)
        model_files.append(name)
        if name.endswith(".onnx"):
            for loc in _external_data_locations(target):
                # ONNX Runtime reads external data relative to the folder of the .onnx file.
                ext = _inside(root, loc, f"{name} references external data {loc!r}", hint, base=(root / name).parent)
                if not ext.is_file():
                    raise CorruptModelError(f"{name} needs external data {loc!r}, which is missing", hint=hint)
                if loc not in external:
                    external.append(loc)
    return ONNXInfo(path=root, config=config, model_files=model_files, external_data=external)


def collect_filenames(node: Any, out: list[str]) -> None:
    """Append to *out* every ``filename`` value in a genai_config section (the decoder, or each stage
    of a pipeline), once each."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "filename" and isinstance(v, str):
                if v not in out:
                    out.append(v)
            else:
                collect_filenames(v, out)
    elif isinstance(node, list):
        for v in node:
            collect_filenames(v, out)


def _inside(root: Path, rel: str, what: str, hint: str, base: Path | None = None) -> Path:
    """``(base or root) / rel`` resolved, if it stays inside ``root``; refuse absolute paths and ``..``.

    Symbolic links are followed, so a link that points out of ``root`` is refused too.
    """
    parts = rel.replace("\\", "/").split("/")
    if (
        not rel
        or "\x00" in rel
        or rel.startswith(("/", "\\"))
        or (len(rel) > 1 and rel[1] == ":")
        or ".." in parts
        or os.path.isabs(rel)
    ):
        raise CorruptModelError(f"{what}: the path must be relative and stay inside the folder", hint=hint)
    target = ((base or root) / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise CorruptModelError(f"{what}: the path leaves the model folder", hint=hint)
    return target


# ONNX protobuf field numbers (onnx.proto), only along the paths that can reach a TensorProto:
# message kind -> {field number: kind of the embedded message}.
_ONNX_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},  # ModelProto.graph / training_info / functions
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # GraphProto.node / initializer / sparse_initializer
    "node": {5: "attr"},  # NodeProto.attribute
    "attr": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},  # t g tensors ...
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto.values / indices
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto.initialization / algorithm
    "function": {7: "node", 11: "attr"},  # FunctionProto.node / attribute_proto
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_DEPTH = 100  # protobuf's default recursion limit
_WT_VARINT, _WT_I64, _WT_LEN, _WT_SGROUP, _WT_EGROUP, _WT_I32 = range(6)


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos`` (up to 10 bytes, non-minimal forms accepted)."""
    result = shift = 0
    while True:
        if pos >= end:
            raise _Bad(f"a varint at byte {pos} runs past the end of its message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise _Bad(f"a varint at byte {pos} is longer than 10 bytes")


def _fields(buf: Any, pos: int, end: int, depth: int = 0) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field, wire type, a, b)`` for each field of the message in ``buf[pos:end]``.

    ``a`` is the value of a varint; ``(a, b)`` the byte range of a length-delimited payload.
    Other wire types (and groups) are skipped.
    """
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        field_no, wt = (tag & 0xFFFFFFFF) >> 3, tag & 7
        if field_no == 0:
            raise _Bad(f"field number 0 at byte {pos}")
        if wt == _WT_VARINT:
            v, pos = _varint(buf, pos, end)
            yield field_no, wt, v, pos
        elif wt == _WT_LEN:
            n, pos = _varint(buf, pos, end)
            if n > end - pos or n > 0x7FFFFFFF:
                raise _Bad(f"a field of {n} bytes at byte {pos} runs past the end of its message")
            yield field_no, wt, pos, pos + n
            pos += n
        elif wt in (_WT_I64, _WT_I32):
            pos += 8 if wt == _WT_I64 else 4
            if pos > end:
                raise _Bad("a fixed-size field runs past the end of its message")
        elif wt == _WT_SGROUP:
            if depth >= _MAX_DEPTH:
                raise _Bad("groups are nested too deeply")
            for f, w, _a, b in _fields(buf, pos, end, depth + 1):
                if w == _WT_EGROUP:
                    if f != field_no:
                        raise _Bad(f"group {field_no} closed by an end tag for field {f}")
                    pos = b
                    break
            else:
                raise _Bad(f"group {field_no} is never closed")
        elif wt == _WT_EGROUP:
            if depth == 0:
                raise _Bad(f"an end-group tag at byte {pos} outside any group")
            yield field_no, wt, pos, pos
            return
        else:
            raise _Bad(f"invalid wire type {wt} at byte {pos}")


def _tensor_locations(buf: Any, start: int, end: int) -> tuple[bytes, bool, list[bytes]]:
    """(name, stored externally?, every ``location`` value) of the TensorProto in ``buf[start:end]``."""
    name, location, found = b"", 0, []
    for f, wt, a, b in _fields(buf, start, end):
        if f == _TENSOR_NAME and wt == _WT_LEN:
            name = bytes(buf[a:b])
        elif f == _TENSOR_DATA_LOCATION:
            if wt != _WT_VARINT:
                raise _Bad(f"tensor {name!r}: data_location is not a varint")
            location = a & 0xFFFFFFFF  # an enum is read as 32 bits; the last occurrence wins
        elif f == _TENSOR_EXTERNAL_DATA:
            if wt != _WT_LEN:
                raise _Bad(f"tensor {name!r}: external_data is not a message")
            key, value = None, None
            for ef, ewt, ea, eb in _fields(buf, a, b):  # StringStringEntryProto: key=1, value=2, any order
                if ef in (1, 2):
                    if ewt != _WT_LEN:
                        raise _Bad(f"tensor {name!r}: an external_data entry has a non-string field")
                    if ef == 1:
                        key = bytes(buf[ea:eb])
                    else:
                        value = bytes(buf[ea:eb])
            if key == b"location":
                found.append(value or b"")
    return name, location == _EXTERNAL, found


def _external_data_locations(onnx_file: Path) -> list[str]:
    """The external-data ``location`` of every tensor in an ONNX file, from its protobuf wire format.

    Walks ModelProto -> graphs (also subgraphs, functions, training graphs) -> initializers, sparse
    initializers and node attributes -> TensorProto, skipping tensor bytes by length. Refuses an
    EXTERNAL tensor without a location, and a file that is not valid protobuf.
    """
    hint = "download the model folder again, or re-export it with onnxruntime_genai.models.builder"
    size = onnx_file.stat().st_size
    if size == 0:
        raise CorruptModelError(f"{onnx_file.name} is empty", hint="download the model folder again")
    out: list[str] = []
    with open(onnx_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            has_graph = False
            stack: list[tuple[str, int, int, int]] = [("model", 0, size, 0)]
            while stack:
                kind, start, end, depth = stack.pop()
                if depth > _MAX_DEPTH:
                    raise _Bad(f"messages are nested more than {_MAX_DEPTH} deep")
                if kind == "tensor":
                    name, external, locs = _tensor_locations(mm, start, end)
                    label = name.decode("utf-8", errors="replace")
                    if external and not locs:
                        raise _Bad(f"tensor {label!r} is stored as external data but names no location")
                    for raw in locs:
                        try:
                            loc = raw.decode("utf-8")
                        except UnicodeDecodeError:
                            raise _Bad(f"tensor {label!r} has an external data location that is not UTF-8") from None
                        if not loc:
                            raise _Bad(f"tensor {label!r} has an empty external data location")
                        if loc not in out:
                            out.append(loc)
                    continue
                children = _ONNX_CHILDREN[kind]
                for f_no, wt, a, b in _fields(mm, start, end):
                    child = children.get(f_no)
                    if child is None:
                        continue
                    if wt != _WT_LEN:
                        raise _Bad(f"field {f_no} of a {kind} message should be a message (wire type {wt})")
                    has_graph = has_graph or (kind == "model" and child == "graph")
                    stack.append((child, a, b, depth + 1))
            if not has_graph:
                raise _Bad("no graph: this is not an ONNX model")
        except _Bad as e:
            raise CorruptModelError(f"{onnx_file.name} is not a valid ONNX model: {e}", hint=hint) from None
    return out
