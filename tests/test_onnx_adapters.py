"""LoRA adapters on the ONNX Runtime GenAI backend: ``.onnx_adapter`` files through onnxruntime-genai's
``Adapters`` API, on a SmolLM2-135M export whose LoRA weights are graph inputs (tests/onnx_model.py,
``smollm2_onnx_lora``: float32, built once per machine and cached, about 1 minute).

The two adapters are the random PEFT adapters of tests/_lora.py (one plain LoRA, one rsLoRA) converted to
``.onnx_adapter``. torch's log-probabilities with the same PEFT adapters, computed when the model is built, are
the reference; llama.cpp applying the same PEFT folders (converted to GGUF by edgeslm) is compared as well.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeslm
from edgeslm.backends.onnx import OnnxGenAIBackend
from edgeslm.backends.onnx_adapters import read_onnx_adapter

from .onnx_model import (
    LORA_PROMPTS,
    LoraModel,
    built_or_skip,
    missing_build_deps,
    missing_lora_build_deps,
    smollm2_onnx,
)
from .onnx_model import smollm2_onnx_lora as build_lora_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime_genai") is None, reason="onnxruntime-genai is not installed"
)

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}


@pytest.fixture(scope="module")
def lora() -> LoraModel:
    return built_or_skip(build_lora_model, missing_lora_build_deps, "the LoRA ONNX test model")


@pytest.fixture(scope="module")
def plain_onnx_dir() -> Path:
    """The normal ONNX test model (no LoRA inputs)."""
    return built_or_skip(smollm2_onnx, missing_build_deps, "the ONNX test model")


@pytest.fixture(scope="module")
def model(lora: LoraModel):
    m = edgeslm.load(lora.folder, n_ctx=512, adapters=lora.adapters)
    yield m
    m.close()


@pytest.fixture(scope="module")
def reference(lora: LoraModel) -> dict[str, np.ndarray]:
    with np.load(lora.reference) as z:
        return {k: z[k] for k in z.files}


def _logprobs(m: edgeslm.Model, tokens: list[int], adapter: str | None) -> np.ndarray:
    with m._gen.holding(adapter=adapter) as engine:
        engine.trim(0)
        engine.eval(tokens)
        logits = engine.logits().astype(np.float64)
    top = logits.max()
    return logits - top - np.log(np.exp(logits - top).sum())


def _prompt_tokens(m: edgeslm.Model, text: str) -> list[int]:
    engine = m._engine
    return ([engine.bos_id] if engine.bos_id is not None else []) + m.tokenize(text)


# ------------------------------------------------------------------------------------ numbers


def test_adapters_apply_as_torch_applies_the_peft_adapter(model, reference) -> None:
    """Float32 ONNX Runtime with each .onnx_adapter gives torch's log-probabilities with the PEFT adapter (whole
    vocabulary), the base with none; the adapters move the top log-probabilities by whole nats."""
    assert model.backend == "onnx" and model.adapters == ("a", "b")
    assert any("adapter 'a'" in w for w in model.plan.why)
    worst = 0.0
    for i, text in enumerate(LORA_PROMPTS):
        toks = _prompt_tokens(model, text)
        assert toks == reference[f"tokens_{i}"].tolist()
        got = {n: _logprobs(model, toks, n) for n in (None, "a", "b")}
        for n in (None, "a", "b"):
            ref = reference[f"{n or 'base'}_{i}"]
            err = float(np.abs(got[n] - ref).max())
            worst = max(worst, err)
            assert err < 2e-3, (text, n, err)
            assert got[n].argmax() == ref.argmax()
        for n in ("a", "b"):
            top = np.argsort(got[n])[-5:]
            assert float(np.abs(got[n][top] - got[None][top]).max()) > 0.3  # the adapter does something
        assert float(np.abs(got["a"] - got["b"]).max()) > 0.3
    print(f"largest |ONNX - torch| log-probability over {len(LORA_PROMPTS)} prompts x 3: {worst:.2e}")


def test_the_base_is_the_base_again_after_an_adapter(lora: LoraModel, model) -> None:
    """No adapter on: exactly the logits of the same folder loaded without adapters, before and after
    calls with adapters (a switch starts the KV cache over: no state of an adapter is left)."""
    toks = _prompt_tokens(model, LORA_PROMPTS[0])
    first = _logprobs(model, toks, None)
    with edgeslm.load(lora.folder, n_ctx=512) as alone:
        assert alone.adapters == ()
        assert np.array_equal(_logprobs(alone, toks, None), first)
        text_alone = alone.generate(LORA_PROMPTS[0], max_tokens=12, temperature=0).text
    for name in ("a", None, "b", None):
        _logprobs(model, toks, name)
    assert np.array_equal(_logprobs(model, toks, None), first)
    assert model.generate(LORA_PROMPTS[0], max_tokens=12, temperature=0).text == text_alone


def test_onnx_and_llama_cpp_choose_the_same_token_with_the_same_adapter(model, lora: LoraModel,
                                                                      reference) -> None:
    """The PEFT folders in llama.cpp (converted to GGUF by edgeslm) and their .onnx_adapter in ONNX Runtime:
    the same next token wherever torch's choice is clear (margin > 0.5 nats)."""
    cases = []  # (prompt index, adapter) where torch's choice is clear (margin > 0.5 nats)
    for i in range(len(LORA_PROMPTS)):
        for n in ("a", "b"):
            ref = reference[f"{n}_{i}"]
            if float(np.diff(np.sort(ref)[-2:])[0]) > 0.5:
                cases.append((i, n))
    assert len(cases) >= 6
    # all ONNX Runtime runs first: its idle threads spin for a while after a run and slow llama.cpp down
    ours = {(i, n): _logprobs(model, reference[f"tokens_{i}"].tolist(), n) for i, n in cases}
    agree = 0
    # one thread: on a busy machine llama.cpp's threads wait for each other (seconds per call with 2 on 2 cores)
    with edgeslm.load("smollm2-135m", n_ctx=256, n_threads=1, adapters=lora.peft) as llama:
        for i, n in cases:
            toks = reference[f"tokens_{i}"].tolist()
            assert toks == _prompt_tokens(llama, LORA_PROMPTS[i])
            theirs, ref = _logprobs(llama, toks, n), reference[f"{n}_{i}"]
            same = ours[i, n].argmax() == theirs.argmax()
            top = np.argsort(ref)[-5:]
            print(f"{n} {LORA_PROMPTS[i][:24]!r}: torch margin {float(np.diff(np.sort(ref)[-2:])[0]):.2f} "
                  f"same={same} |onnx - llama.cpp| top-5 {np.abs(ours[i, n][top] - theirs[top]).max():.2f}")
            agree += int(same)
    assert agree == len(cases)


# ------------------------------------------------------------------------------------ calls


def test_per_call_adapter_in_generate_chat_and_extract(lora: LoraModel, model) -> None:
    msgs = [{"role": "user", "content": "Name a colour."}]
    text = "Maria Lopez, aged 31, moved to Lisbon last year."
    prompt = LORA_PROMPTS[4]  # each adapter changes its greedy continuation
    alone: dict[str | None, tuple[str, str, Any]] = {}
    for name in (None, "a", "b"):
        adapters = {name: lora.adapters[name]} if name else None
        with edgeslm.load(lora.folder, n_ctx=512, adapters=adapters) as m:
            alone[name] = (m.generate(prompt, max_tokens=10, temperature=0, adapter=name).text,
                           m.chat(msgs, max_tokens=8, temperature=0, adapter=name).text,
                           m.extract(text, PERSON, adapter=name).data)
    for i in range(3):
        assert len({alone[n][i] if i < 2 else repr(alone[n][i]) for n in alone}) > 1, i
    assert alone["a"][0] != alone[None][0] and alone["b"][0] != alone[None][0] and alone["a"][0] != alone["b"][0]
    for name in ("b", None, "a", "a", None, "b"):  # every call switches (or not) on one engine
        assert model.generate(prompt, max_tokens=10, temperature=0, adapter=name).text == alone[name][0]
        assert model.chat(msgs, max_tokens=8, temperature=0, adapter=name).text == alone[name][1]
        assert model.extract(text, PERSON, adapter=name).data == alone[name][2]
    view = model.with_adapter("b")
    assert view.adapter == "b" and view._engine is model._engine
    assert view.chat(msgs, max_tokens=8, temperature=0).text == alone["b"][1]
    assert view.extract(text, PERSON).data == alone["b"][2]
    assert model.chat(msgs, max_tokens=8, temperature=0).text == alone[None][1]
    with pytest.raises(edgeslm.AdapterError, match="no adapter 'c'"):
        model.generate(prompt, max_tokens=2, adapter="c")


def test_prefix_reuse_and_a_rebuilt_generator_keep_the_adapter(model) -> None:
    """Within one adapter the KV cache is extended and trimmed; where the engine cannot rewind, the fresh
    generator that replaces it carries the adapter too."""
    toks = _prompt_tokens(model, LORA_PROMPTS[1])
    want = _logprobs(model, toks, "a")

    def logprobs(engine: Any) -> np.ndarray:
        x = engine.logits().astype(np.float64)
        return x - x.max() - np.log(np.exp(x - x.max()).sum())

    with model._gen.holding(adapter="a") as engine:
        engine.trim(0)
        engine.eval(toks[:-3])
        engine.eval(toks[-3:])
        assert np.abs(logprobs(engine) - want).max() < 1e-4
        engine.trim(len(toks) - 1)  # rewind_to
        engine.eval(toks[-1:])
        assert np.abs(logprobs(engine) - want).max() < 1e-4
        real = engine._gen

        class NoRewind:
            def __getattr__(self, k: str) -> Any:
                return getattr(real, k)

            def rewind_to(self, n: int) -> None:
                raise RuntimeError("cannot rewind")

        engine._gen = NoRewind()
        engine.trim(len(toks) - 2)  # falls back to a new generator re-fed with the kept tokens
        assert engine._gen is not real and engine.seq_tokens(0) == toks[:-2]
        engine.eval(toks[-2:])
        assert np.abs(logprobs(engine) - want).max() < 1e-4


# ------------------------------------------------------------------------------------ errors


def _first_dims_offset(data: bytes) -> int:
    """Offset of the first parameter's first dimension in an .onnx_adapter (to forge a lying header)."""
    from edgeslm.backends.onnx_adapters import _FlatBuffer

    fb = _FlatBuffer(data, len(data))
    root = fb.table(fb.deref(0, "root"), "root")
    first, _ = fb.vector(fb.field(root, 3, 4, "parameters"), 4, "parameters")
    param = fb.table(fb.deref(first, "p"), "p")
    dims, _ = fb.vector(fb.field(param, 1, 4, "dims"), 8, "dims")
    return dims


def test_an_adapter_on_a_model_without_lora_inputs_is_a_clear_error(plain_onnx_dir: Path, lora: LoraModel) -> None:
    """onnxruntime-genai itself would load the file and fail only at the first token ("Invalid input name")."""
    with pytest.raises(edgeslm.AdapterError) as e:
        edgeslm.load(plain_onnx_dir, n_ctx=256, adapters={"a": lora.adapters["a"]})
    msg = str(e.value)
    assert plain_onnx_dir.name in msg and "has no LoRA inputs" in msg and "a.onnx_adapter" in msg, msg
    assert "llama.cpp" in e.value.hint and "Olive" in e.value.hint


def test_bad_adapter_files_are_adapter_errors_naming_file_and_model(lora: LoraModel, model, tmp_path: Path,
                                                                   smollm2_path: Path) -> None:
    """Each bad file is refused before onnxruntime-genai reads it, and leaves the model as it was."""
    import onnxruntime as ort

    good = lora.adapters["a"].read_bytes()
    engine: OnnxGenAIBackend = model._engine
    model_name = lora.folder.name

    def refused(path: Any, scale: float = 1.0) -> edgeslm.AdapterError:
        with pytest.raises(edgeslm.AdapterError) as e:
            engine.load_adapter("x", str(path), scale)
        assert engine.adapter_names() == ["a", "b"]
        return e.value

    # through load()
    with pytest.raises(edgeslm.AdapterError, match="does not exist"):
        edgeslm.load(lora.folder, n_ctx=256, adapters={"x": tmp_path / "nowhere.onnx_adapter"})
    garbage = tmp_path / "garbage.onnx_adapter"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(edgeslm.AdapterError, match=r"garbage\.onnx_adapter is not a valid ONNX Runtime adapter"):
        edgeslm.load(lora.folder, n_ctx=256, adapters={"ok": lora.adapters["a"], "x": garbage})
    cases = {"truncated": good[: len(good) // 2], "empty": b"", "forged-id": good[:8] + os.urandom(2048)}
    for label, data in cases.items():
        f = tmp_path / f"{label}.onnx_adapter"
        f.write_bytes(data)
        err = refused(f)
        assert "not a valid ONNX Runtime adapter" in err.message and f.name in err.message, (label, err)
        assert model_name in err.message and ".onnx_adapter" in err.hint
    # a header whose shape asks for far more bytes than the file holds
    forged = bytearray(good)
    struct.pack_into("<q", forged, _first_dims_offset(good), 1 << 30)
    (tmp_path / "lying.onnx_adapter").write_bytes(forged)
    assert "holds" in refused(tmp_path / "lying.onnx_adapter").message
    # a GGUF (the base model itself) and a PEFT folder are for llama.cpp
    err = refused(smollm2_path)
    assert "GGUF" in err.message and "llama.cpp" in err.message
    assert "PEFT folder" in refused(lora.peft["a"]).message
    # well-formed adapters that do not fit this model: other names, another type, another shape, broken pairs
    values = ort.AdapterFormat.read_adapter(str(lora.adapters["a"])).get_parameters()
    params = {k: np.array(v.numpy()) for k, v in values.items()}  # copies: the arrays are views of the file

    def write(label: str, tensors: dict[str, np.ndarray]) -> Path:
        a = ort.AdapterFormat()
        a.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()})
        out = tmp_path / f"{label}.onnx_adapter"
        a.export_adapter(str(out))
        return out

    err = refused(write("renamed", {"other." + k: v for k, v in params.items()}))
    assert "has no input for" in err.message and model_name in err.message and "renamed.onnx_adapter" in err.message
    assert "float16" in refused(write("fp16", {k: v.astype(np.float16) for k, v in params.items()})).message
    narrow = {k: (v[:100] if k.endswith("q_proj.lora_A.weight") else v) for k, v in params.items()}
    err = refused(write("narrow", narrow))
    assert "[100, 8]" in err.message and "[576, lora_r]" in err.message, err
    ranks = {k: (v[:4] if k.endswith("lora_B.weight") else v) for k, v in params.items()}
    assert "ranks differ" in refused(write("ranks", ranks)).message
    assert "scale" in refused(lora.adapters["a"], 0.5).message
    with pytest.raises(edgeslm.AdapterError, match="already loaded"):
        engine.load_adapter("a", str(lora.adapters["a"]))
    # nothing half-loaded: the model still runs with its adapters
    assert model.generate("Hi", max_tokens=2, temperature=0, adapter="a").text is not None


def test_read_onnx_adapter_reads_what_onnxruntime_wrote(lora: LoraModel) -> None:
    import onnxruntime as ort

    ours = read_onnx_adapter(lora.adapters["b"])
    theirs = ort.AdapterFormat.read_adapter(str(lora.adapters["b"])).get_parameters()
    assert set(ours) == set(theirs) and len(ours) == 30 * 7 * 2
    for name, p in ours.items():
        arr = theirs[name].numpy()
        assert p.dims == arr.shape and p.dtype == "float32"


def test_a_model_whose_lora_inputs_have_no_default_needs_an_adapter(lora: LoraModel) -> None:
    """An export whose LoRA inputs are required (Olive's optional_inputs=False): a call without an adapter
    says so instead of failing inside the engine, and an adapter must cover those inputs."""
    with edgeslm.load(lora.folder, n_ctx=256, adapters={"a": lora.adapters["a"]}) as m:
        engine: OnnxGenAIBackend = m._engine
        inputs = engine._model_lora_inputs()  # this export: 420 LoRA inputs, each with an empty default
        assert len(inputs) == 420 and all(g.has_default for g in inputs.values()) and engine._lora_required == []
        name = sorted(inputs)[0]
        engine._lora_required = [name]  # as read from such a graph (an input without an initializer)
        with pytest.raises(edgeslm.AdapterError, match="cannot run without an adapter"):
            m.generate("Hi", max_tokens=2, temperature=0)
        assert m.generate("Hi", max_tokens=2, temperature=0, adapter="a").text is not None
        half = read_onnx_adapter(lora.adapters["a"])
        half.pop(name)
        with pytest.raises(edgeslm.AdapterError, match="leaves out 1 LoRA inputs"):
            engine._check_adapter("half", lora.adapters["a"], half)


def test_a_folder_with_one_adapter_file_is_that_file(lora: LoraModel, tmp_path: Path) -> None:
    d = tmp_path / "one"
    d.mkdir()
    shutil.copy(lora.adapters["b"], d / "tickets.onnx_adapter")
    with edgeslm.load(lora.folder, n_ctx=256, adapters={"b": d}) as m:
        toks = _prompt_tokens(m, LORA_PROMPTS[0])
        with edgeslm.load(lora.folder, n_ctx=256, adapters={"b": lora.adapters["b"]}) as ref:
            assert np.array_equal(_logprobs(m, toks, "b"), _logprobs(ref, toks, "b"))
    shutil.copy(lora.adapters["a"], d / "other.onnx_adapter")
    with pytest.raises(edgeslm.AdapterError, match=r"no single \.onnx_adapter"):
        edgeslm.load(lora.folder, n_ctx=256, adapters={"b": d})
