"""ONNX Runtime's LoRA adapter files (``.onnx_adapter``), read and checked in Python before the
engine sees them (model files are untrusted input), and the graph inputs they must feed.

onnxruntime-genai applies LoRA through these files (a flatbuffer): each parameter is fed to the
model as the graph input of the same name, so only a model exported with its LoRA weights as inputs
can take one (Olive's ExtractAdapters pass writes such a model; ``onnxruntime_genai.models.builder
--extra_options adapter_path=...`` bakes one adapter into the weights instead). ONNX Runtime checks
the flatbuffer's structure but not that a parameter's bytes fill its shape: :func:`read_onnx_adapter`
does, and :func:`_graph_inputs` reads the inputs of the model's graph to match them against.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import AdapterError

__all__ = ["AdapterParameter", "read_onnx_adapter"]

# ------------------------------------------------------------------------------------ LoRA adapters
#
# onnxruntime-genai applies LoRA through ONNX Runtime's adapter files (``.onnx_adapter``, a flatbuffer):
# each parameter of the file is fed to the model as the graph input of the same name, so only a model
# exported with its LoRA weights as inputs can take one (Olive's ExtractAdapters pass writes such a model;
# ``onnxruntime_genai.models.builder --extra_options adapter_path=...`` bakes one adapter into the weights
# instead). ONNX Runtime checks the flatbuffer's structure but not that a parameter's bytes fill its shape,
# so the file is read and checked here, in Python, against the model's graph before the engine sees it.

#: ONNX tensor element types (also the ``TensorDataType`` enum of the adapter format): name, bytes.
_ELEM_TYPES: dict[int, tuple[str, int]] = {
    1: ("float32", 4), 2: ("uint8", 1), 3: ("int8", 1), 4: ("uint16", 2), 5: ("int16", 2), 6: ("int32", 4),
    7: ("int64", 8), 9: ("bool", 1), 10: ("float16", 2), 11: ("float64", 8), 12: ("uint32", 4),
    13: ("uint64", 8), 14: ("complex64", 8), 15: ("complex128", 16), 16: ("bfloat16", 2),
    17: ("float8e4m3fn", 1), 18: ("float8e4m3fnuz", 1), 19: ("float8e5m2", 1), 20: ("float8e5m2fnuz", 1),
}
_ADAPTER_ID = b"TORT"  # the adapter schema's file_identifier
_ADAPTER_FORMAT_VERSIONS = (1,)  # what onnxruntime's loader accepts (adapter_format_version.h)
_MAX_ADAPTER_PARAMS = 1 << 20
_MAX_DIMS = 16
_ADAPTER_HINT = (
    "pass the .onnx_adapter file exported for this model (Olive: `olive convert-adapters`, or "
    "onnxruntime.AdapterFormat); a PEFT folder or a GGUF LoRA is for the llama.cpp backend"
)
_NO_LORA_HINT = (
    "export the model with its LoRA weights as graph inputs (Olive's ExtractAdapters pass, make_inputs=True) "
    "and the adapter with `olive convert-adapters`, or load the model's GGUF with the llama.cpp backend, "
    "which applies a PEFT or GGUF LoRA to any model"
)


@dataclass(frozen=True)
class AdapterParameter:
    """One tensor of an ``.onnx_adapter`` file: the graph input it feeds, its element type and shape."""

    name: str
    elem_type: int
    dims: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return _ELEM_TYPES.get(self.elem_type, (f"type {self.elem_type}", 0))[0]


@dataclass(frozen=True)
class _GraphInput:
    elem_type: int
    dims: tuple[int | str, ...] | None  # None: no shape given; a str: a symbolic (free) dimension
    has_default: bool  # an initializer of the same name: the input may be left out


class _BadAdapter(Exception):
    """Internal: a structural problem of an adapter file (turned into AdapterError with its name)."""


class _FlatBuffer:
    """Bounds-checked reads of a flatbuffer (little-endian), enough to walk tables and vectors."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.size = buf, size

    def need(self, pos: int, n: int, what: str) -> None:
        if pos < 0 or n < 0 or pos + n > self.size:
            raise _BadAdapter(f"{what} (byte {pos}, {n} bytes) lies outside the file ({self.size} bytes)")

    def u16(self, pos: int, what: str) -> int:
        self.need(pos, 2, what)
        return int(struct.unpack_from("<H", self.buf, pos)[0])

    def u32(self, pos: int, what: str) -> int:
        self.need(pos, 4, what)
        return int(struct.unpack_from("<I", self.buf, pos)[0])

    def i32(self, pos: int, what: str) -> int:
        self.need(pos, 4, what)
        return int(struct.unpack_from("<i", self.buf, pos)[0])

    def deref(self, pos: int, what: str) -> int:
        """The position an unsigned offset stored at *pos* points to."""
        target = pos + self.u32(pos, what)
        self.need(target, 4, what)
        return target

    def table(self, pos: int, what: str) -> tuple[int, int, int, int]:
        """(table start, vtable start, vtable size, table size) of the table at *pos*."""
        vt = pos - self.i32(pos, what)
        vt_size, tbl_size = self.u16(vt, f"{what}'s vtable"), self.u16(vt + 2, f"{what}'s vtable")
        if vt_size < 4 or vt_size % 2:
            raise _BadAdapter(f"{what} has a vtable of {vt_size} bytes")
        self.need(vt, vt_size, f"{what}'s vtable")
        self.need(pos, max(tbl_size, 4), what)
        return pos, vt, vt_size, tbl_size

    def field(self, table: tuple[int, int, int, int], index: int, width: int, what: str) -> int | None:
        """Where field *index* of *table* is stored (``None``: absent, its default applies)."""
        pos, vt, vt_size, tbl_size = table
        slot = 4 + 2 * index
        if slot + 2 > vt_size:
            return None
        off = self.u16(vt + slot, what)
        if off == 0:
            return None
        if off + width > tbl_size:
            raise _BadAdapter(f"{what} lies outside its table")
        return pos + off

    def vector(self, at: int, elem: int, what: str) -> tuple[int, int]:
        """(first element, count) of the vector an offset at *at* points to."""
        start = self.deref(at, what)
        count = self.u32(start, what)
        self.need(start + 4, count * elem, what)
        return start + 4, count


def read_onnx_adapter(path: str | os.PathLike[str]) -> dict[str, AdapterParameter]:
    """The parameters of an ONNX Runtime adapter file (``.onnx_adapter``), read and checked in Python:
    identifier and format version, every offset inside the file, a known element type, and raw bytes
    that fill each shape exactly. Raises ``AdapterError`` naming the file; nothing native runs."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            if size < 16:
                raise _BadAdapter(f"the file has {size} bytes")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse_adapter(_FlatBuffer(mm, size))
    except _BadAdapter as exc:
        raise AdapterError(f"{p.name} is not a valid ONNX Runtime adapter (.onnx_adapter): {exc}",
                           hint=_ADAPTER_HINT) from None
    except (OSError, ValueError) as exc:
        raise AdapterError(f"cannot read the adapter {p}: {exc}",
                           hint="check that the file exists and is readable") from None


def _parse_adapter(fb: _FlatBuffer) -> dict[str, AdapterParameter]:
    head = bytes(fb.buf[:8])
    if head[:4] == b"GGUF":
        raise _BadAdapter("it is a GGUF file (a GGUF LoRA is for the llama.cpp backend)")
    if head[4:8] != _ADAPTER_ID:
        raise _BadAdapter(f"no {_ADAPTER_ID.decode()} identifier at byte 4 (found {head[4:8]!r})")
    root = fb.table(fb.deref(0, "the root table"), "the adapter table")
    at = fb.field(root, 0, 4, "format_version")
    version = fb.i32(at, "format_version") if at is not None else 0
    if version not in _ADAPTER_FORMAT_VERSIONS:
        raise _BadAdapter(f"format version {version}; this onnxruntime reads version(s) "
                          f"{', '.join(map(str, _ADAPTER_FORMAT_VERSIONS))}")
    at = fb.field(root, 3, 4, "parameters")
    if at is None:
        raise _BadAdapter("it holds no parameters")
    first, count = fb.vector(at, 4, "the parameter list")
    if count == 0:
        raise _BadAdapter("it holds no parameters")
    if count > _MAX_ADAPTER_PARAMS:
        raise _BadAdapter(f"it claims {count} parameters")
    out: dict[str, AdapterParameter] = {}
    for i in range(count):
        what = f"parameter {i}"
        t = fb.table(fb.deref(first + 4 * i, what), what)
        at = fb.field(t, 0, 4, f"{what}'s name")
        if at is None:
            raise _BadAdapter(f"{what} has no name")
        s0, n = fb.vector(at, 1, f"{what}'s name")
        try:
            name = bytes(fb.buf[s0 : s0 + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise _BadAdapter(f"{what}'s name is not UTF-8") from None
        if not name:
            raise _BadAdapter(f"{what} has an empty name")
        what = f"parameter {name!r}"
        if name in out:
            raise _BadAdapter(f"{what} is given twice")
        at = fb.field(t, 1, 4, f"{what}'s dims")
        if at is None:
            raise _BadAdapter(f"{what} has no shape")
        d0, nd = fb.vector(at, 8, f"{what}'s dims")
        if nd > _MAX_DIMS:
            raise _BadAdapter(f"{what} has {nd} dimensions")
        dims = struct.unpack_from(f"<{nd}q", fb.buf, d0) if nd else ()
        if any(d < 0 for d in dims):
            raise _BadAdapter(f"{what} has a negative dimension {list(dims)}")
        at = fb.field(t, 2, 4, f"{what}'s data_type")
        etype = fb.i32(at, f"{what}'s data_type") if at is not None else 0
        if etype not in _ELEM_TYPES:
            raise _BadAdapter(f"{what} has element type {etype}, which is not a numeric ONNX type")
        at = fb.field(t, 3, 4, f"{what}'s raw_data")
        if at is None:
            raise _BadAdapter(f"{what} has no data")
        _, nbytes = fb.vector(at, 1, f"{what}'s raw_data")
        want = math.prod(dims) * _ELEM_TYPES[etype][1]
        if nbytes != want:
            raise _BadAdapter(f"{what} is {_ELEM_TYPES[etype][0]}{list(dims)} ({want} bytes) but holds {nbytes} bytes")
        out[name] = AdapterParameter(name, etype, tuple(int(d) for d in dims))
    return out


def _graph_inputs(onnx_file: Path) -> dict[str, _GraphInput]:
    """The graph inputs of an ONNX file (type, shape, whether an initializer gives a default), from
    its protobuf wire format (tensor bytes are skipped by length, nothing native runs)."""
    from .onnx_files import _WT_LEN, _WT_VARINT, _Bad, _fields

    inputs: dict[str, tuple[int, tuple[int | str, ...] | None]] = {}
    initializers: set[str] = set()

    def text(buf: Any, a: int, b: int) -> str:
        return bytes(buf[a:b]).decode("utf-8", "replace")

    def value_info(buf: Any, a: int, b: int) -> None:
        name, etype, dims = "", 0, None
        for f, wt, ta, tb in _fields(buf, a, b):
            if f == 1 and wt == _WT_LEN:
                name = text(buf, ta, tb)
            elif f == 2 and wt == _WT_LEN:  # TypeProto
                for f2, wt2, a2, b2 in _fields(buf, ta, tb):
                    if f2 != 1 or wt2 != _WT_LEN:  # tensor_type
                        continue
                    for f3, wt3, a3, b3 in _fields(buf, a2, b2):
                        if f3 == 1 and wt3 == _WT_VARINT:
                            etype = a3 & 0xFFFFFFFF
                        elif f3 == 2 and wt3 == _WT_LEN:  # TensorShapeProto
                            dims = []
                            for f4, wt4, a4, b4 in _fields(buf, a3, b3):
                                if f4 != 1 or wt4 != _WT_LEN:
                                    continue
                                dim: int | str = "?"
                                for f5, wt5, a5, b5 in _fields(buf, a4, b4):
                                    if f5 == 1 and wt5 == _WT_VARINT and a5 < 1 << 63:
                                        dim = int(a5)
                                    elif f5 == 2 and wt5 == _WT_LEN:
                                        dim = text(buf, a5, b5) or "?"
                                dims.append(dim)
        if name:
            inputs[name] = (etype, tuple(dims) if dims is not None else None)

    size = onnx_file.stat().st_size
    if size == 0:
        raise _Bad("the file is empty")
    with open(onnx_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for fm, wtm, am, bm in _fields(mm, 0, size):
            if fm != 7 or wtm != _WT_LEN:  # ModelProto.graph
                continue
            for fg, wtg, ag, bg in _fields(mm, am, bm):
                if fg == 11 and wtg == _WT_LEN:  # GraphProto.input
                    value_info(mm, ag, bg)
                elif fg == 5 and wtg == _WT_LEN:  # GraphProto.initializer: only the name (field 8)
                    for ft, wtt, at, bt in _fields(mm, ag, bg):
                        if ft == 8 and wtt == _WT_LEN:
                            initializers.add(text(mm, at, bt))
    return {n: _GraphInput(e, d, n in initializers) for n, (e, d) in inputs.items()}


def _fed_by_genai(name: str, dec_inputs: dict[str, Any]) -> bool:
    """Whether onnxruntime-genai itself feeds the graph input *name* (ids, mask, positions, KV cache...)."""
    if name == "num_logits_to_keep" or name.startswith("onnx::Neg_"):
        return True
    for v in dec_inputs.values():
        if not isinstance(v, str):
            continue
        if name == v or ("%d" in v and re.fullmatch(re.escape(v).replace("%d", r"\d+"), name)):
            return True
    return False


def _shape_text(dims: Sequence[int | str] | None) -> str:
    return "[?]" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"
