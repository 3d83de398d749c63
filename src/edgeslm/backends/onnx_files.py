"""The ONNX Runtime GenAI folder check: a readable ``genai_config.json``, the files it names, and
external-data paths that stay inside the folder (found by walking the protobuf wire format of each
``.onnx`` file, without the ``onnx`` package). The onnx engine's ``validate``
(:mod:`edgeslm.backends.onnx`).
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import CorruptModelError, ModelNotFoundError

__all__ = ["ONNXInfo", "collect_filenames", "onnx_shape", "validate_onnx_folder"]


class _Bad(Exception):
    """Internal: a structural problem, turned into CorruptModelError with the file name."""


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


def onnx_shape(info: Any, size: int) -> Any:
    """The planner's :class:`~edgeslm.runtime.planner.ModelShape` from a folder's ``genai_config.json``:
    the layer and KV-head counts it states, the size on disk split evenly over the layers."""
    from ..runtime.planner import ModelShape

    dec = (getattr(info, "config", None) or {}).get("model", {}).get("decoder", {})
    n = int(dec.get("num_hidden_layers") or 1)
    kv = n * int(dec.get("num_key_value_heads") or 0) * int(dec.get("head_size") or 0) * 2 * 2
    other = size // 10
    per = (size - other) // n
    return ModelShape(n, (per,) * n, size - per * n, kv, getattr(info, "context_length", None), "onnx")
