"""GGUF header / ONNX folder validation, including a seeded fuzz run over the real small model."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import random
import re
import struct
import subprocess
import sys
import types
from pathlib import Path

import pytest

from edgeslm import _errors as E
from edgeslm.backends import gguf_file as V
from edgeslm.backends import onnx_files
from edgeslm.backends.gguf_file import GGUFInfo, validate_gguf
from edgeslm.backends.onnx_files import validate_onnx_folder
from edgeslm.store.validate import validate_model_file

from ._store_fakehub import make_gguf, make_onnx

N_LOAD = int(os.environ.get("EDGESLM_FUZZ_LOADS", "6"))  # survivors loaded by llama.cpp


@pytest.fixture
def small_gguf(tmp_path: Path) -> Path:
    return make_gguf(tmp_path / "small.gguf", n_vocab=100, n_tensors=3)


def _patch(src: Path, dst: Path, offset: int, data: bytes) -> Path:
    b = bytearray(src.read_bytes())
    b[offset : offset + len(data)] = data
    dst.write_bytes(bytes(b))
    return dst


def test_valid_small_gguf(small_gguf: Path) -> None:
    info = validate_model_file(small_gguf)
    assert isinstance(info, GGUFInfo)
    assert info.architecture == "llama" and info.context_length == 256 and info.tensor_count == 3
    assert info.vocab_size == 100 and info.chat_template and info.version == 3


@pytest.mark.parametrize(
    ("offset", "data", "needle"),
    [
        (0, b"GGUX", "magic"),
        (4, struct.pack("<I", 1), "version 1"),
        (4, struct.pack("<I", 7), "version 7"),
        (4, struct.pack(">I", 3), "big-endian"),
        (8, struct.pack("<Q", 10**12), "tensor count"),
        (16, struct.pack("<Q", 10**12), "metadata count"),
        (24, struct.pack("<Q", 2**63), "key #0"),  # length of the first key
    ],
)
def test_header_corruptions(small_gguf: Path, tmp_path: Path, offset: int, data: bytes, needle: str) -> None:
    bad = _patch(small_gguf, tmp_path / "bad.gguf", offset, data)
    with pytest.raises(E.CorruptModelError) as ei:
        validate_gguf(bad)
    assert needle in str(ei.value) and ei.value.hint


def test_truncated_file(small_gguf: Path, tmp_path: Path) -> None:
    raw = small_gguf.read_bytes()
    for cut in (0, 3, 10, 100, 1000, len(raw) - 1):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(raw[:cut])
        with pytest.raises(E.CorruptModelError):
            validate_gguf(p)


def _tensor_info_offsets(path: Path) -> list[tuple[int, int]]:
    """(position of n_dims, position of the offset field) for each tensor info."""
    info = validate_gguf(path)
    raw = path.read_bytes()
    pos = _after_kv(raw, info.kv_count)
    out = []
    for _ in range(info.tensor_count):
        (n,) = struct.unpack_from("<Q", raw, pos)
        pos += 8 + n
        nd_pos = pos
        (nd,) = struct.unpack_from("<I", raw, pos)
        pos += 4 + 8 * nd + 4
        out.append((nd_pos, pos))
        pos += 8
    return out


def _after_kv(raw: bytes, kv_count: int) -> int:
    """Position of the first tensor info: just after the key/value block."""
    pos = 24
    for _ in range(kv_count):
        (n,) = struct.unpack_from("<Q", raw, pos)
        pos += 8 + n
        (t,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        pos = _skip_value(raw, pos, t)
    return pos


_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip_value(raw: bytes, pos: int, t: int) -> int:
    if t == 8:
        (n,) = struct.unpack_from("<Q", raw, pos)
        return pos + 8 + n
    if t == 9:
        et, cnt = struct.unpack_from("<IQ", raw, pos)
        pos += 12
        for _ in range(cnt):
            pos = _skip_value(raw, pos, et)
        return pos
    return pos + _SIZES[t]


def test_tensor_info_checks(small_gguf: Path, tmp_path: Path) -> None:
    (nd0, off0), (_, off1), _ = _tensor_info_offsets(small_gguf)
    cases = [
        (nd0, struct.pack("<I", 5), "dimensions"),
        (nd0 + 4, struct.pack("<Q", 0), "invalid dimension"),
        (nd0 + 4 + 16, struct.pack("<I", 4), "unknown type"),  # type 4 (Q4_2) was removed from ggml
        (off1, struct.pack("<Q", 8), "not aligned"),
        (off1, struct.pack("<Q", 1 << 40), "offset"),
        (off0, struct.pack("<Q", 64), "expected 0"),
    ]
    for pos, data, needle in cases:
        bad = _patch(small_gguf, tmp_path / "t.gguf", pos, data)
        with pytest.raises(E.CorruptModelError) as ei:
            validate_gguf(bad)
        assert needle in str(ei.value), (needle, str(ei.value))


def test_wrong_typed_alignment_and_vocab_mismatch(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    def write(name: str, fn) -> Path:
        p = tmp_path / name
        w = gguf.GGUFWriter(str(p), "llama")
        fn(w)
        w.add_tensor("t", np.zeros((32,), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return p

    p = write("align.gguf", lambda w: w.add_string("general.alignment", "32"))
    with pytest.raises(E.CorruptModelError, match=r"general\.alignment must be a u32"):
        validate_gguf(p)
    p = write("align3.gguf", lambda w: w.add_uint32("general.alignment", 3))
    with pytest.raises(E.CorruptModelError, match="power of two"):
        validate_gguf(p)

    def vocab(w):
        w.add_token_list(["a", "b", "c"])
        w.add_token_scores([0.0, 1.0])

    with pytest.raises(E.CorruptModelError, match="scores has 2 entries"):
        validate_gguf(write("vocab.gguf", vocab))

    def bos(w):
        w.add_token_list(["a", "b", "c"])
        w.add_bos_token_id(7)

    with pytest.raises(E.CorruptModelError, match="outside the vocabulary"):
        validate_gguf(write("bos.gguf", bos))


def test_not_a_model(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"hello world" * 10)
    with pytest.raises(E.CorruptModelError):
        validate_model_file(p)
    with pytest.raises(E.ModelNotFoundError):
        validate_model_file(tmp_path / "missing.gguf")


def _mapped(monkeypatch: pytest.MonkeyPatch, view, limit: int | None = None) -> None:
    """Make the validator see ``view(bytes)`` instead of a memory map of the file, where ``bytes``
    are the whole file, or its first ``limit`` bytes."""

    def fake_mmap(fileno: int, length: int, access: int = 0) -> contextlib.AbstractContextManager:
        data = b""
        while (limit is None or len(data) < limit) and (
            chunk := os.pread(fileno, min(1 << 24, (limit or 1 << 62) - len(data)), len(data))
        ):
            data += chunk
        return contextlib.nullcontext(view(data))

    fake = types.SimpleNamespace(mmap=fake_mmap, ACCESS_READ=mmap.ACCESS_READ)
    monkeypatch.setattr(V, "mmap", fake)
    monkeypatch.setattr(onnx_files, "mmap", fake)


@pytest.mark.parametrize("bundled", ["smollm2-135m", "gemma-3-270m"])
def test_real_models_validate_from_the_header_alone(bundled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded work: validation reads only the header (metadata + tensor table), never tensor data.

    The validator is handed the first ``data_offset`` bytes of the file and nothing else: reading one
    byte past them would raise or change the result.
    """
    from edgeslm.store.bundled import bundled_path

    try:
        path = bundled_path(bundled)
    except E.ModelNotFoundError as e:
        pytest.skip(f"bundled model {bundled} not installed: {e.message}")
    info = validate_model_file(path)
    assert isinstance(info, GGUFInfo)
    assert info.architecture in ("llama", "gemma3")
    assert info.vocab_size and info.vocab_size >= 49152
    header = info.data_offset
    assert header < info.file_size // 10, (header, info.file_size)
    _mapped(monkeypatch, lambda data: data, limit=header)
    again = validate_gguf(path)
    assert (again.metadata, again.array_lengths, again.tensor_count, again.data_offset) == (
        info.metadata,
        info.array_lengths,
        info.tensor_count,
        info.data_offset,
    )


# ------------------------------------------------------------------------------------ tensor types


def test_ggml_type_table_matches_the_gguf_package() -> None:
    """GGML_TYPE_SIZES is a copy: it must agree with the gguf package, and know every type it knows."""
    pytest.importorskip("gguf")
    from gguf.constants import GGML_QUANT_SIZES

    theirs = {int(t): (int(b), int(n)) for t, (b, n) in GGML_QUANT_SIZES.items()}
    assert {t: (v, theirs.get(t)) for t, v in V.GGML_TYPE_SIZES.items() if theirs.get(t) != v} == {}
    missing = sorted(set(theirs) - set(V.GGML_TYPE_SIZES))
    assert missing == [], f"ggml types {missing} are new in the gguf package: add them to GGML_TYPE_SIZES"
    assert not V.GGML_REMOVED_TYPES & set(theirs)
    assert max(theirs) < V.GGML_MAX_PLAUSIBLE_TYPE


def _two_tensor_gguf(path: Path) -> Path:
    """A GGUF with a Q1_0 tensor (type 41, new in 2025) followed by an F32 one."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("q", np.zeros((2, 18), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q1_0)
    w.add_tensor("f", np.zeros((32,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_newer_tensor_types_are_not_called_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _two_tensor_gguf(tmp_path / "new.gguf")
    info = validate_gguf(p)  # in edgeslm's table: 2 x 18 bytes is one 128-value Q1_0 block per row
    assert info.tensor_count == 2 and info.tensor_bytes["q"] == 36
    (_, off_q), (_, off_f) = _tensor_info_offsets(p)
    type_q = off_q - 4
    # not in edgeslm's table: the gguf package's table has it, and gives its exact size (a type in
    # no table is only bounded by the next tensor's offset: 64 bytes here, with the padding)
    monkeypatch.setattr(V, "GGML_TYPE_SIZES", {k: v for k, v in V.GGML_TYPE_SIZES.items() if k != 41})
    V._gguf_package_type_sizes.cache_clear()
    info = validate_gguf(p)
    assert info.tensor_count == 2 and info.tensor_bytes["q"] == 36
    # in no table (a type newer than both): accepted, its data bounded by the next tensor's offset
    monkeypatch.setattr(V, "_gguf_package_type_sizes", lambda: {})
    t60 = _patch(p, tmp_path / "t60.gguf", type_q, struct.pack("<I", 60))
    info = validate_gguf(t60)
    assert info.tensor_count == 2 and info.tensor_bytes["q"] == 64  # up to the F32 tensor's offset
    # ... which must leave room for it
    with pytest.raises(E.CorruptModelError, match="no room for its data"):
        validate_gguf(_patch(t60, tmp_path / "squeezed.gguf", off_f, struct.pack("<Q", 0)))
    # an id far past ggml's types, or one ggml removed, is damage
    for bad in (200, 2**31, 4, 37):
        with pytest.raises(E.CorruptModelError, match=f"unknown type {bad}"):
            validate_gguf(_patch(p, tmp_path / "bad.gguf", type_q, struct.pack("<I", bad)))


# ------------------------------------------------------------------------------------ ONNX


def _vint(n: int, pad: int = 0) -> bytes:
    """Protobuf varint of ``n``; ``pad`` extra bytes make it non-minimal (still valid protobuf)."""
    out = bytearray()
    while True:
        out.append(n & 0x7F)
        n >>= 7
        if not n:
            break
    for _ in range(pad):
        out.append(0)
    for i in range(len(out) - 1):
        out[i] |= 0x80
    return bytes(out)


def _field(no: int, payload: bytes, pad: int = 0) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _vint(no << 3 | 2, pad) + _vint(len(payload), pad) + payload


def _hostile_model(location: str, where: str, pad: int = 0) -> bytes:
    """A valid ONNX model with an EXTERNAL tensor whose external_data entry has its value before its key.

    ``where`` puts the tensor in an initializer, a Constant node attribute, a sparse initializer or
    the subgraph of an If node; ``pad`` writes the tags and lengths as non-minimal varints.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import AttributeProto, ModelProto, NodeProto, SparseTensorProto, TensorProto

    entry = _field(2, location.encode(), pad) + _field(1, b"location", pad)  # value first, then key
    t = TensorProto(name="w", dims=[4, 4], data_type=TensorProto.FLOAT, data_location=TensorProto.EXTERNAL)
    tensor = t.SerializeToString() + _field(13, entry, pad)
    if where == "initializer":
        graph = _field(5, tensor, pad)
    elif where == "attribute":
        attr = AttributeProto(name="value", type=AttributeProto.TENSOR).SerializeToString() + _field(5, tensor, pad)
        graph = _field(1, NodeProto(op_type="Constant", output=["w"]).SerializeToString() + _field(5, attr, pad))
    elif where == "sparse":
        sparse = SparseTensorProto(dims=[4, 4]).SerializeToString() + _field(1, tensor, pad)
        graph = _field(15, sparse, pad)
    else:  # a subgraph: If(cond).then_branch holds the tensor
        body = _field(2, b"then") + _field(5, tensor, pad)
        attr = AttributeProto(name="then_branch", type=AttributeProto.GRAPH).SerializeToString() + _field(6, body)
        graph = _field(1, NodeProto(op_type="If", input=["c"], output=["y"]).SerializeToString() + _field(5, attr))
    model = ModelProto(ir_version=8).SerializeToString() + _field(7, _field(2, b"g") + graph, pad)
    # The onnx package (the protobuf runtime) reads this file and sees the hostile location.
    parsed = onnx.load_model_from_string(model)
    assert f'value: "{location}"' in str(parsed)
    return model


def _onnx_folder(
    root: Path, location: str | None = "model.onnx.data", cfg: dict | None = None, model: bytes | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg = cfg or {"model": {"type": "phi3", "context_length": 4096, "decoder": {"filename": "model.onnx"}}}
    (root / "genai_config.json").write_text(json.dumps(cfg))
    (root / "model.onnx").write_bytes(model if model is not None else make_onnx(location))
    (root / "model.onnx.data").write_bytes(b"\0" * 64)
    (root / "tokenizer.json").write_text("{}")
    return root


def test_onnx_folder_ok(tmp_path: Path) -> None:
    info = validate_onnx_folder(_onnx_folder(tmp_path / "m"))
    assert info.model_files == ["model.onnx"] and info.external_data == ["model.onnx.data"]
    assert info.context_length == 4096
    assert validate_model_file(tmp_path / "m").path == tmp_path / "m"  # type: ignore[union-attr]
    import onnx

    onnx.checker.check_model(str(tmp_path / "m" / "model.onnx"))  # a valid model, external data included
    assert onnx.load(str(tmp_path / "m" / "model.onnx")).graph.initializer[0].raw_data == b"\0" * 64
    inline = _onnx_folder(tmp_path / "inline", model=make_onnx(external=False))
    assert validate_onnx_folder(inline).external_data == []


@pytest.mark.parametrize("loc", ["../evil.bin", "/etc/passwd", "sub/../../x", "C:\\windows\\x", "a/../../b"])
def test_onnx_external_data_must_stay_inside(tmp_path: Path, loc: str) -> None:
    with pytest.raises(E.CorruptModelError, match="external data"):
        validate_onnx_folder(_onnx_folder(tmp_path / "m", location=loc))


@pytest.mark.parametrize("pad", [0, 1], ids=["minimal", "non-minimal-varints"])
@pytest.mark.parametrize("where", ["initializer", "attribute", "sparse", "subgraph"])
def test_onnx_swapped_entry_fields_cannot_hide_a_location(tmp_path: Path, where: str, pad: int) -> None:
    """value-before-key entries, in every place a tensor can live, are found by the protobuf walk."""
    (tmp_path / "evil.bin").write_bytes(b"\0" * 64)
    root = _onnx_folder(tmp_path / "m", model=_hostile_model("../evil.bin", where, pad))
    with pytest.raises(E.CorruptModelError, match=re.escape("external data '../evil.bin'")) as ei:
        validate_onnx_folder(root)
    assert ei.value.hint
    # the same file shape with a harmless location is accepted: the walk reads it, it does not guess
    ok = _onnx_folder(tmp_path / "ok", model=_hostile_model("model.onnx.data", where, pad))
    assert validate_onnx_folder(ok).external_data == ["model.onnx.data"]


def test_onnx_external_tensor_without_location_or_graph(tmp_path: Path) -> None:
    with pytest.raises(E.CorruptModelError, match="names no location"):
        validate_onnx_folder(_onnx_folder(tmp_path / "a", location=None))
    for name, junk in [("nograph", b"\x08\x07"), ("truncated", make_onnx()[:-5]), ("text", b"hello world")]:
        with pytest.raises(E.CorruptModelError, match="not a valid ONNX model"):
            validate_onnx_folder(_onnx_folder(tmp_path / name, model=junk))


def test_onnx_external_data_symlink_out_of_the_folder(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    root = _onnx_folder(tmp_path / "m", location="weights.bin")
    (root / "weights.bin").symlink_to(tmp_path / "outside.bin")
    with pytest.raises(E.CorruptModelError, match="leaves the model folder"):
        validate_onnx_folder(root)


class _CountingBuffer:
    """A read-only buffer that counts the bytes the ONNX walk looks at."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.touched = 0

    def __getitem__(self, i: int | slice) -> int | bytes:
        v = self.data[i]
        self.touched += len(v) if isinstance(v, bytes) else 1
        return v

    def __len__(self) -> int:
        return len(self.data)


def test_onnx_walk_skips_tensor_bytes_on_a_large_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded work: an 86 MB model.onnx with its weights inline; the walk skips tensor bytes by length."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros(86 * 2**20 // 4, np.float32), "w")
    nodes = [helper.make_node("Identity", ["x"], [f"y{i}"]) for i in range(2000)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [1])], [w])
    root = tmp_path / "big"
    _onnx_folder(root, model=b"")
    onnx.save_model(helper.make_model(graph), root / "model.onnx")
    size = (root / "model.onnx").stat().st_size
    assert size > 86 * 10**6
    seen: list[_CountingBuffer] = []
    _mapped(monkeypatch, lambda data: seen.append(_CountingBuffer(data)) or seen[-1])
    assert validate_onnx_folder(root).external_data == []
    (buf,) = seen
    assert 0 < buf.touched < 256 * 1024, f"the walk looked at {buf.touched} of {size} bytes"


def test_onnx_real_genai_model_if_built() -> None:
    """The SmolLM2 ONNX GenAI export of tests/onnx_model.py, when an earlier run built it."""
    from .onnx_model import cache_root

    built = sorted(p for p in cache_root().glob("onnx-smollm2-*/.complete")
                   if "-lora-" not in p.parent.name)  # the LoRA export (test_onnx_adapters) is laid out otherwise
    if not built:
        pytest.skip("the ONNX test model is not built (python tests/onnx_model.py builds it)")
    info = validate_onnx_folder(built[-1].parent)
    assert info.model_files[0] == "model.onnx" and info.external_data == ["model.onnx.data"]


def test_onnx_config_problems(tmp_path: Path) -> None:
    root = _onnx_folder(tmp_path / "a")
    (root / "genai_config.json").write_text("{not json")
    with pytest.raises(E.CorruptModelError, match="cannot be parsed"):
        validate_onnx_folder(root)
    root = _onnx_folder(tmp_path / "b", cfg={"model": {"decoder": {"filename": "../model.onnx"}}})
    with pytest.raises(E.CorruptModelError, match="relative"):
        validate_onnx_folder(root)
    root = _onnx_folder(tmp_path / "c", cfg={"model": {"decoder": {"filename": "missing.onnx"}}})
    with pytest.raises(E.CorruptModelError, match="missing"):
        validate_onnx_folder(root)
    root = _onnx_folder(tmp_path / "d")
    (root / "model.onnx.data").unlink()
    with pytest.raises(E.CorruptModelError, match="missing"):
        validate_onnx_folder(root)
    with pytest.raises(E.ModelNotFoundError):
        validate_onnx_folder(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------ fuzz


def _mutants(header: bytes, data_offset: int, fields: list[int], n: int, seed: int = 20240607):
    """Yield (description, mutated header bytes, size delta) for ``n`` seeded mutations."""
    rnd = random.Random(seed)
    for i in range(n):
        kind = i % 7
        b = bytearray(header)
        if kind == 0:  # flip bytes in the first 4 KB
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(4096)] ^= 1 << rnd.randrange(8)
            yield f"flip4k#{i}", bytes(b), 0
        elif kind == 1:  # random byte anywhere in the metadata / tensor table
            b[rnd.randrange(data_offset)] = rnd.randrange(256)
            yield f"byte#{i}", bytes(b), 0
        elif kind == 2:  # corrupt a length / count / offset field
            pos = rnd.choice(fields)
            val = rnd.choice([0, 1, 2**63, 2**64 - 1, rnd.randrange(1 << 32), rnd.randrange(1 << 20)])
            b[pos : pos + 8] = struct.pack("<Q", val)
            yield f"len#{i}@{pos}={val}", bytes(b), 0
        elif kind == 3:  # corrupt a value-type / element-type / n_dims field (u32)
            pos = rnd.choice(fields) + 8
            b[pos : pos + 4] = struct.pack("<I", rnd.choice([9, 12, 13, 255, 2**31, rnd.randrange(16)]))
            yield f"type#{i}@{pos}", bytes(b), 0
        elif kind == 4:  # truncate (header region or a little past it)
            cut = rnd.randrange(data_offset + 4096)
            yield f"trunc#{i}@{cut}", bytes(b[:cut]), None
        elif kind == 5:  # insert or delete a few bytes in the header
            pos = rnd.randrange(24, data_offset)
            if rnd.random() < 0.5:
                del b[pos : pos + rnd.randint(1, 16)]
            else:
                b[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
            yield f"indel#{i}@{pos}", bytes(b), len(b) - len(header)
        else:  # overwrite a run with random bytes in the first 64 KB
            pos = rnd.randrange(min(65536, data_offset))
            run = rnd.randint(1, 32)
            b[pos : pos + run] = bytes(rnd.randrange(256) for _ in range(run))
            yield f"run#{i}@{pos}", bytes(b), 0


def _length_fields(raw: bytes, kv_count: int) -> list[int]:
    """Positions of the u64 length/count fields in the metadata block (keys, strings, arrays)."""
    out = [8, 16]
    pos = 24
    for _ in range(kv_count):
        out.append(pos)
        (n,) = struct.unpack_from("<Q", raw, pos)
        pos += 8 + n
        (t,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if t == 8:
            out.append(pos)
        elif t == 9:
            out.append(pos + 4)
            if len(out) < 200:
                (et,) = struct.unpack_from("<I", raw, pos)
                if et == 8:  # a few string lengths inside the array
                    p2 = pos + 12
                    for _ in range(3):
                        out.append(p2)
                        (m,) = struct.unpack_from("<Q", raw, p2)
                        p2 += 8 + m
        pos = _skip_value(raw, pos, t)
    return out


@pytest.mark.slow
def test_fuzz_gguf_headers_from_real_model(smollm2_path: Path, tmp_path: Path) -> None:
    """600 mutated headers of the real SmolLM2 file: each validates or raises CorruptModelError."""
    info = validate_gguf(smollm2_path)
    size = info.file_size
    with open(smollm2_path, "rb") as f:
        header = f.read(info.data_offset + 8192)
    fields = _length_fields(header, info.kv_count) + [p for p, _ in _tensor_positions(header, info)]
    work = tmp_path / "mutant.gguf"
    counts = {"ok": 0, "corrupt": 0}
    valid: list[tuple[str, bytes, int | None]] = []
    for desc, mutated, delta in _mutants(header, info.data_offset, fields, 600):
        with open(work, "wb") as f:
            f.write(mutated)
            if delta is not None:  # same layout: sparse tail up to the original size (+/- shift)
                f.truncate(size + delta)
        try:
            validate_model_file(work)
        except E.CorruptModelError as e:
            assert e.hint, desc
            counts["corrupt"] += 1
        else:
            counts["ok"] += 1
            valid.append((desc, mutated, delta))
    assert counts["ok"] + counts["corrupt"] == 600
    assert counts["corrupt"] > 300, counts
    # Load a handful of the survivors with llama.cpp in a subprocess: none may crash the process.
    pytest.importorskip("llama_cpp")
    rnd = random.Random(7)
    for desc, mutated, delta in rnd.sample(valid, min(N_LOAD, len(valid))):
        p = tmp_path / "survivor.gguf"
        with open(p, "wb") as f:
            f.write(mutated)
            f.truncate(size + (delta or 0))
        code = (
            "import sys, llama_cpp\n"
            "try:\n"
            "    llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
            "except Exception as e:\n"
            "    print('refused:', e)\n"
        )
        r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{desc}: llama.cpp died with {r.returncode}: {r.stderr[-500:]}"


def _tensor_positions(header: bytes, info: GGUFInfo) -> list[tuple[int, int]]:
    pos = _after_kv(header, info.kv_count)
    out = []
    for _ in range(info.tensor_count):
        name_pos = pos
        (n,) = struct.unpack_from("<Q", header, pos)
        pos += 8 + n
        (nd,) = struct.unpack_from("<I", header, pos)
        out.append((name_pos, pos))
        out.append((pos + 4, pos))  # first dimension
        pos += 4 + 8 * nd + 4
        out.append((pos, pos))  # offset
        pos += 8
    return out
