"""LoRA adapters at run time: PEFT folders converted to GGUF LoRA, loaded beside the quantized base by the
real llama.cpp, switched per call, and checked against torch applying the same adapter.

The adapters are real PEFT adapters with random weights (tests/_lora.py): training is not needed to check
that llama.cpp applies them as torch does, and random ones change the model's choices more than a few
training steps would.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import edgeslm

from ._lora import hf_model, missing_train_deps, random_lora, torch_logprobs
from .conftest import requires_gemma, requires_smollm2
from .onnx_model import LORA_PROMPTS

pytestmark = pytest.mark.skipif(bool(missing_train_deps()), reason='needs the train extra: pip install -e ".[dev]"')

PROMPTS = list(LORA_PROMPTS)  # the prompts the ONNX adapter test's reference was computed on
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}


def _bundled(name: str) -> Path:
    from edgeslm.store.bundled import bundled_path

    return bundled_path(name)


@pytest.fixture(scope="module")
def smol_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two PEFT adapters for SmolLM2-135M (llama architecture: the Q/K rows are permuted)."""
    root = tmp_path_factory.mktemp("smol-lora")
    gguf = _bundled("smollm2-135m")
    out = {}
    for seed, name in ((1, "one"), (2, "two")):
        random_lora(hf_model(gguf), root / name, seed=seed, use_rslora=(seed == 2))  # rsLoRA scales by sqrt(r)
        out[name] = root / name
    return out


def _llama_logprobs(model: edgeslm.Model, tokens: list[int], adapter: str | None) -> np.ndarray:
    with model._gen.holding(adapter=adapter) as engine:
        engine.trim(0)
        engine.eval(tokens)
        logits = engine.logits().astype(np.float64)
    m = logits.max()
    return logits - m - np.log(np.exp(logits - m).sum())


def _prompt_tokens(model: edgeslm.Model, text: str) -> list[int]:
    engine = model._engine
    bos = [engine.bos_id] if engine.bos_id is not None else []
    return bos + model.tokenize(text)


@pytest.mark.parametrize(("bundled", "std"), [pytest.param("smollm2-135m", 0.08, marks=requires_smollm2),
                                              pytest.param("gemma-3-270m", 0.01, marks=requires_gemma)])
def test_llama_cpp_applies_a_peft_adapter_as_torch_does(bundled: str, std: float, tmp_path: Path) -> None:
    """The same next token as torch with the same adapter, and log-probabilities as close as the quantized base
    is to its own float weights. (A missed Q/K permutation or a wrong scale is off by whole nats.)"""
    gguf = _bundled(bundled)
    # std: an adapter that moves the top log-probabilities by about 0.5-3 nats (gemma's activations are larger)
    net = random_lora(hf_model(gguf), tmp_path / "lora", seed=7, std=std)
    agree = 0
    with edgeslm.load(bundled, n_ctx=256, adapters={"r": tmp_path / "lora"}) as m:
        assert m.adapters == ("r",) and any("adapter 'r'" in w for w in m.plan.why)
        for text in PROMPTS:
            toks = _prompt_tokens(m, text)
            ours, base = _llama_logprobs(m, toks, "r"), _llama_logprobs(m, toks, None)
            ref = torch_logprobs(net, toks)
            with net.disable_adapter():
                ref_base = torch_logprobs(net, toks)
            top, top_base = np.argsort(ref)[-5:], np.argsort(ref_base)[-5:]
            margin = float(np.diff(np.sort(ref)[-2:])[0])
            err = float(np.abs(ours[top] - ref[top]).max())
            quant_err = float(np.abs(base[top_base] - ref_base[top_base]).max())  # the quantized base's own error
            effect = float(np.abs(ours[top] - base[top]).max())
            print(f"{bundled} {text[:24]!r}: same={ours.argmax() == ref.argmax()} margin {margin:.2f}, "
                  f"error {err:.3f} (base alone {quant_err:.3f}), adapter effect {effect:.2f}")
            assert effect > 0.3  # the adapter does something: a dropped or zeroed one would pass the rest
            assert err <= max(0.5, 2 * quant_err)
            if margin > 0.5:  # a clear choice in torch is the choice in llama.cpp
                assert ours.argmax() == ref.argmax()
            agree += int(ours.argmax() == ref.argmax())
    assert agree >= len(PROMPTS) - 1  # at most one near-tie goes the other way


@requires_smollm2
def test_per_call_switching_gives_what_each_adapter_alone_gives(smol_adapters: dict[str, Path]) -> None:
    alone: dict[str | None, list[str]] = {}
    for name in (None, "one", "two"):
        adapters = {name: smol_adapters[name]} if name else None
        with edgeslm.load("smollm2-135m", n_ctx=512, adapters=adapters) as m:
            alone[name] = [m.generate(p, max_tokens=10, temperature=0, adapter=name).text for p in PROMPTS[:3]]
    assert alone["one"] != alone[None] and alone["two"] != alone[None] and alone["one"] != alone["two"]
    with edgeslm.load("smollm2-135m", n_ctx=512, adapters=smol_adapters) as m:
        assert m.adapters == ("one", "two") and m.adapter is None
        order = ["one", None, "two", "one", "two", None, "one"]
        for i, name in enumerate(order):  # interleaved: every call switches
            p = PROMPTS[i % 3]
            assert m.generate(p, max_tokens=10, temperature=0, adapter=name).text == alone[name][i % 3]
        two = m.with_adapter("two")  # a view: same engine, "two" by default
        assert two.adapter == "two" and two._engine is m._engine
        assert two.generate(PROMPTS[0], max_tokens=10, temperature=0).text == alone["two"][0]
        assert two.generate(PROMPTS[0], max_tokens=10, temperature=0, adapter="one").text == alone["one"][0]
        assert m.generate(PROMPTS[0], max_tokens=10, temperature=0).text == alone[None][0]
        with pytest.raises(edgeslm.AdapterError, match="no adapter 'three'"):
            m.generate(PROMPTS[0], max_tokens=4, adapter="three")
        with pytest.raises(edgeslm.AdapterError):
            m.with_adapter("three")


@requires_smollm2
def test_extract_chat_and_batches_use_the_adapter_of_the_call(smol_adapters: dict[str, Path]) -> None:
    texts = ["Maria Lopez, aged 31, moved to Lisbon last year.", PROMPTS[1], "Tom, 45, lives in Oslo."]
    msgs = [{"role": "user", "content": "Name a colour."}]
    # batch_invariant: extract_many gives token for token what extract gives, so the adapter is all that differs
    with edgeslm.load("smollm2-135m", n_ctx=1024, adapters=smol_adapters, batch_invariant=True) as m:
        one = [m.extract(t, PERSON, adapter="one").data for t in texts]
        base = [m.extract(t, PERSON).data for t in texts]
        chat_one = m.chat(msgs, max_tokens=8, temperature=0, adapter="one").text
        chat_base = m.chat(msgs, max_tokens=8, temperature=0).text
        assert one != base and chat_one != chat_base
        # extract_many decodes in a batch context forked from the model: it must carry the call's adapter
        assert [r.data for r in m.extract_many(texts, PERSON, batch_size=3, adapter="one")] == one
        assert [r.data for r in m.extract_many(texts, PERSON, batch_size=3)] == base
        view = m.with_adapter("one")
        assert view.chat(msgs, max_tokens=8, temperature=0).text == chat_one
        assert [r.data for r in view.extract_many(texts, PERSON, batch_size=2)] == one
    # the same numerics (batch_invariant), only the adapters loaded differ: another kernel choice can
    # flip a near-tie token on some CPUs ("Lisbon" / "Lisbon," on an AMD EPYC without AMX)
    with edgeslm.load("smollm2-135m", n_ctx=1024, adapters={"one": smol_adapters["one"]},
                      batch_invariant=True) as alone:
        assert [alone.extract(t, PERSON, adapter="one").data for t in texts] == one


@requires_smollm2
def test_a_view_keeps_its_model_alive(smol_adapters: dict[str, Path]) -> None:
    import gc

    view = edgeslm.load("smollm2-135m", n_ctx=256, adapters=smol_adapters).with_adapter("one")
    gc.collect()  # the model itself is unreachable now, only its view is left
    assert not view.closed and view.generate("Hi", max_tokens=2, temperature=0).text is not None
    view.close()  # closing a view closes the model
    assert view.closed


@requires_smollm2
def test_four_threads_with_different_adapters_stay_correct(smol_adapters: dict[str, Path]) -> None:
    names: list[str | None] = [None, "one", "two", "one"]
    with edgeslm.load("smollm2-135m", n_ctx=512, adapters=smol_adapters) as m:
        expected = {n: [m.generate(p, max_tokens=8, temperature=0, adapter=n).text for p in PROMPTS[:3]]
                    for n in set(names)}
        got: dict[int, list[str]] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(len(names))

        def worker(i: int, name: str | None) -> None:
            try:
                start.wait()
                got[i] = [m.generate(p, max_tokens=8, temperature=0, adapter=name).text
                          for _ in range(2) for p in PROMPTS[:3]]
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i, n)) for i, n in enumerate(names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        for i, name in enumerate(names):
            assert got[i] == expected[name] * 2, name


# ------------------------------------------------------------------------------ bad adapters


@requires_smollm2
def test_a_converted_adapter_is_cached_by_content(smol_adapters: dict[str, Path]) -> None:
    from edgeslm.distill.adapters import adapter_cache

    with edgeslm.load("smollm2-135m", n_ctx=256, adapters={"one": smol_adapters["one"]}):
        pass
    made = {p: p.stat().st_mtime_ns for p in adapter_cache().glob("*-llama-*.gguf")}
    assert made
    with edgeslm.load("smollm2-135m", n_ctx=256, adapters={"one": smol_adapters["one"]}):
        pass
    assert {p: p.stat().st_mtime_ns for p in adapter_cache().glob("*-llama-*.gguf")} == made  # not converted again
    assert not list(adapter_cache().glob(".*.part"))
    # the cached file itself loads as a GGUF adapter
    gguf_file = next(iter(made))
    with edgeslm.load("smollm2-135m", n_ctx=256, adapters={"g": (gguf_file, 0.5)}) as m:
        assert m.adapters == ("g",)


def _no_leftovers() -> None:
    from edgeslm.distill.adapters import adapter_cache

    assert not [p.name for p in adapter_cache().iterdir() if p.name.startswith(".") or p.suffix == ".part"]


@requires_smollm2
def test_broken_adapters_are_adapter_errors_and_leave_nothing_half_written(
        smol_adapters: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    src = smol_adapters["one"]

    def folder(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    # a truncated safetensors file
    d = folder("truncated")
    data = (d / "adapter_model.safetensors").read_bytes()
    (d / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(edgeslm.AdapterError, match=r"safetensors|truncated|ends"):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": d})
    # a header that lies about offsets
    d = folder("hostile")
    raw = bytearray((d / "adapter_model.safetensors").read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"] = [0, 1 << 40]
    blob = json.dumps(header).encode().ljust(n)
    (d / "adapter_model.safetensors").write_bytes(bytes(raw[:8]) + blob[:n] + bytes(raw[8 + n:]))
    with pytest.raises(edgeslm.AdapterError):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": d})
    # pickled weights only
    d = folder("pickle")
    os.rename(d / "adapter_model.safetensors", d / "adapter_model.bin")
    with pytest.raises(edgeslm.AdapterError, match="pickle"):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": d})
    # DoRA cannot be written as a GGUF LoRA
    d = folder("dora")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(edgeslm.AdapterError, match="DoRA"):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": d})
    # a config that is not JSON
    d = folder("badcfg")
    (d / "adapter_config.json").write_text("{not json")
    with pytest.raises(edgeslm.AdapterError, match=r"adapter_config\.json"):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": d})
    # not a path at all, a bad scale, a missing file
    with pytest.raises(edgeslm.AdapterError):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": 3})
    with pytest.raises(edgeslm.AdapterError, match="scale"):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": (src, float("nan"))})
    with pytest.raises(edgeslm.AdapterError, match="does not exist"):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": tmp_path / "nowhere.gguf"})
    _no_leftovers()


@requires_smollm2
def test_broken_gguf_adapters_never_reach_llama_cpp(smol_adapters: dict[str, Path], tmp_path: Path,
                                                   smollm2_path: Path) -> None:
    from edgeslm.distill.adapters import adapter_cache

    with edgeslm.load("smollm2-135m", n_ctx=256, adapters={"one": smol_adapters["one"]}):
        pass
    good = next(adapter_cache().glob("*-llama-*.gguf")).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(edgeslm.AdapterError, match="not a valid GGUF adapter"):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": cut})
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(4096))
    with pytest.raises(edgeslm.AdapterError):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": junk})
    # a model is not an adapter
    with pytest.raises(edgeslm.AdapterError, match="not a LoRA adapter"):
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": smollm2_path})


@requires_smollm2
@requires_gemma
def test_an_adapter_for_another_base_names_both(smol_adapters: dict[str, Path], tmp_path: Path) -> None:
    # a PEFT folder of the llama-architecture SmolLM2 on the gemma3 base
    with pytest.raises(edgeslm.AdapterError) as e:
        edgeslm.load("gemma-3-270m", n_ctx=256, adapters={"x": smol_adapters["one"]})
    msg = str(e.value)
    assert "gemma" in msg and ("llama" in msg or "576" in msg or "shape" in msg), msg
    # its GGUF conversion on the gemma3 base: the architectures differ
    from edgeslm.distill.adapters import adapter_cache

    with edgeslm.load("smollm2-135m", n_ctx=256, adapters={"one": smol_adapters["one"]}):
        pass
    gguf_file = next(iter(sorted(adapter_cache().glob("*-llama-*.gguf"))))
    with pytest.raises(edgeslm.AdapterError, match=r"'llama'.*'gemma3'|'gemma3'.*'llama'"):
        edgeslm.load("gemma-3-270m", n_ctx=256, adapters={"x": gguf_file})
    # same architecture, other sizes: a LoRA whose A has the wrong input width
    import shutil

    d = tmp_path / "narrow"
    shutil.copytree(smol_adapters["one"], d)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(d / "adapter_model.safetensors")
    tensors = {k: (v[:, :100] if ".lora_A." in k and "q_proj" in k else v) for k, v in tensors.items()}
    save_file(tensors, d / "adapter_model.safetensors")
    with pytest.raises(edgeslm.AdapterError, match="do not fit the base") as e:
        edgeslm.load("smollm2-135m", n_ctx=256, adapters={"x": d})
    assert ".gguf" in str(e.value) and "A(8, 100)" in str(e.value)
    _no_leftovers()


def test_import_edgeslm_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, edgeslm; edgeslm.load; edgeslm.AdapterError; "
            "bad = [m for m in ('torch', 'transformers', 'peft', 'llama_cpp', 'gguf') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_serve_answers_with_the_adapter_the_model_name_picks(smol_adapters: dict[str, Path], tmp_path: Path) -> None:
    """``edgeslm serve --adapter one=PATH`` serves ``MODEL:one`` beside the base: free text and schema
    replies (the batched path) are those of the same model loaded in process with that adapter."""
    httpx = pytest.importorskip("httpx2")
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from .test_serve import Server

    s = Server([str(_bundled("smollm2-135m")), "--port", "0", "--n-ctx", "1024",
                "--adapter", f"one={smol_adapters['one']}"], tmp_path / "server.log")
    person = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": person}}
    try:
        s.wait_ready()
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0, timeout=120)
        ids = [m.id for m in c.models.list().data]
        base = ids[0]
        assert f"{base}:one" in ids
        with edgeslm.load("smollm2-135m", n_ctx=1024, adapters={"one": smol_adapters["one"]}) as m:
            differs = 0
            for prompt in PROMPTS[:3]:
                msgs = [{"role": "user", "content": prompt}]
                for name, adapter in ((base, None), (f"{base}:one", "one")):
                    served = c.chat.completions.create(model=name, messages=msgs, max_tokens=8, temperature=0)
                    local = m.chat(msgs, max_tokens=8, temperature=0, adapter=adapter)
                    assert served.choices[0].message.content == local.text, (name, prompt)
                differs += m.chat(msgs, max_tokens=8, temperature=0).text != local.text
            assert differs >= 1  # the adapter is applied, not ignored
            msgs = [{"role": "user", "content": "Ana Silva is 31 years old."}]
            served = c.chat.completions.create(model=f"{base}:one", messages=msgs, temperature=0,
                                               response_format=fmt)  # type: ignore[arg-type]
            local = m.chat(msgs, temperature=0, response_format=fmt, adapter="one")
            assert json.loads(served.choices[0].message.content or "") == json.loads(local.text)
        r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": f"{base}:nope", "messages": msgs})
        assert r.status_code in (400, 404) and "nope" in r.text
    finally:
        s.stop()
