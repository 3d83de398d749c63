"""edgeslm.finetune / ``edgeslm finetune``: a bounded LoRA run (a dozen steps) on the bundled SmolLM2 with
labels made by ``edgeslm.teach``; the adapter it writes is loaded by the real llama.cpp and makes the
taught answers more likely there. The full training runs, and the accuracy they buy, are in
``benchmarks/distill.py``."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeslm

from ._lora import missing_train_deps
from .conftest import requires_smollm2

pytestmark = [requires_smollm2,
              pytest.mark.skipif(bool(missing_train_deps()), reason='needs the train extra: pip install -e ".[dev]"')]


def _contacts(n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from edgeslm.bench.labeled import load_task

    schema, rows = load_task("contacts")
    return schema, rows[:n]


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """Twelve contacts labeled through edgeslm.teach (the gold labels as the teacher)."""
    schema, rows = _contacts(12)
    gold = {r["text"]: r["expected"] for r in rows}
    out = tmp_path_factory.mktemp("ft") / "train.jsonl"
    report = edgeslm.teach([r["text"] for r in rows], schema, teacher=lambda req: gold[req.messages[-1]["content"]],
                           out=out)
    assert report.labeled == 12
    return schema, rows, out


def _answer_nll(model: edgeslm.Model, data: Path, schema: Any, adapter: str | None, n: int = 6) -> float:
    """Mean negative log-likelihood per answer token of the dataset's first *n* answers, in llama.cpp."""
    from edgeslm.distill.finetune import _encode, read_dataset

    examples = read_dataset(data)[0][:n]
    total = count = 0.0
    for tokens, start in _encode(model, examples, schema, 1024):
        with model._gen.holding(adapter=adapter) as engine:
            engine.trim(0)
            engine.eval(tokens[:start])
            first = engine.logits().copy()  # predicts the first answer token
            rows = engine.eval_rows(tokens[start:], len(tokens) - start)  # row j predicts answer token j + 1
        logits = np.concatenate([first[None], rows[:-1]]).astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        target = np.array(tokens[start:])
        total -= float(logp[np.arange(len(target)), target].sum())
        count += len(target)
    return total / count


def test_a_bounded_finetune_writes_an_adapter_that_llama_cpp_applies(taught, tmp_path: Path) -> None:
    schema, rows, data = taught
    losses: list[float] = []
    out = tmp_path / "adapter"
    report = edgeslm.finetune("smollm2-135m", data=data, out=out, schema=schema, rank=8, learning_rate=1e-3,
                              batch_size=2, epochs=3, max_steps=8, threads=2, on_step=lambda s, v: losses.append(v))
    assert isinstance(report, edgeslm.FinetuneReport)
    assert report.steps == 8 == len(losses) and report.examples == 12
    assert report.train_examples + report.eval_examples == 12 and report.eval_examples >= 1
    assert report.eval_loss_before is not None and min(report.eval_loss) < report.eval_loss_before  # it learned
    assert all(math.isfinite(x) for x in losses)
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter.gguf", "edgeslm_adapter.json",
                 "README.md"):
        assert (out / name).is_file(), name
    card = json.loads((out / "edgeslm_adapter.json").read_text())
    from edgeslm.store.bundled import bundled_path

    assert card["base_sha256"] == hashlib.sha256(bundled_path("smollm2-135m").read_bytes()).hexdigest()
    assert card["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert card["steps"] == 8 and card["settings"]["rank"] == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    # the folder loads as it is (PEFT files, converted by edgeslm), and so does the GGUF it wrote
    with edgeslm.load("smollm2-135m", n_ctx=1024, adapters={"ft": out, "gguf": out / "adapter.gguf"}) as m:
        base_nll = _answer_nll(m, data, schema, None)
        ft_nll = _answer_nll(m, data, schema, "ft")
        assert ft_nll < base_nll * 0.8, (ft_nll, base_nll)  # the taught answers are more likely in llama.cpp
        assert abs(_answer_nll(m, data, schema, "gguf", 2) - _answer_nll(m, data, schema, "ft", 2)) < 1e-3  # same
        got = m.extract(rows[0]["text"], schema, adapter="ft")
        assert got.data.keys() == set(schema["properties"])


def test_bad_datasets_are_dataset_errors_and_stay_intact(tmp_path: Path) -> None:
    schema, rows = _contacts(2)
    good = {"messages": [{"role": "user", "content": rows[0]["text"]},
                         {"role": "assistant", "content": json.dumps(rows[0]["expected"])}]}
    cases = {
        "empty": "",
        "not json": json.dumps(good) + "\n{oops\n",
        "no messages": json.dumps({"text": "x"}) + "\n",
        "no answer": json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}),
        "empty answer": json.dumps({"messages": [{"role": "user", "content": "x"},
                                                 {"role": "assistant", "content": " "}]}),
        "bad role": json.dumps({"messages": [{"role": "robot", "content": "x"},
                                             {"role": "assistant", "content": "{}"}]}),
        "outside the schema": json.dumps({"messages": [{"role": "user", "content": "x"},
                                                       {"role": "assistant", "content": '{"name": 3}'}]}),
        "not utf-8": b"\xff\xfe{}\n",
    }
    for why, content in cases.items():
        path = tmp_path / "data.jsonl"
        raw = content if isinstance(content, bytes) else content.encode()
        path.write_bytes(raw)
        out = tmp_path / "out"
        with pytest.raises(edgeslm.DatasetError) as e:
            edgeslm.finetune("smollm2-135m", data=path, out=out, schema=schema, max_steps=1)
        assert "data.jsonl" in str(e.value) and e.value.hint, why
        if why == "not json":
            assert "line 2" in str(e.value)
        assert path.read_bytes() == raw and not out.exists(), why
    with pytest.raises(edgeslm.DatasetError, match="cannot read"):
        edgeslm.finetune("smollm2-135m", data=tmp_path / "missing.jsonl", out=tmp_path / "o")
    (tmp_path / "data.jsonl").write_text(json.dumps(good) + "\n")
    (tmp_path / "file").write_text("x")
    with pytest.raises(edgeslm.InvalidRequestError, match="not a folder"):
        edgeslm.finetune("smollm2-135m", data=tmp_path / "data.jsonl", out=tmp_path / "file")
    for bad in ({"rank": 0}, {"epochs": 0}, {"max_steps": 0}, {"eval_fraction": 1.5}, {"device": "tpu"}):
        with pytest.raises(edgeslm.InvalidRequestError):
            edgeslm.finetune("smollm2-135m", data=tmp_path / "data.jsonl", out=tmp_path / "o", **bad)
    assert not (tmp_path / "o").exists()


def test_cli_finetune(taught, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeslm.cli import main

    schema, _, data = taught
    (tmp_path / "s.json").write_text(json.dumps(schema))
    rc = main(["finetune", "smollm2-135m", "--data", str(data), "--out", str(tmp_path / "a"), "--schema",
               str(tmp_path / "s.json"), "--max-steps", "2", "--batch-size", "2", "--rank", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 steps" in out and "adapters=" in out
    assert (tmp_path / "a" / "adapter.gguf").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n")
    assert main(["finetune", "smollm2-135m", "--data", str(bad), "--out", str(tmp_path / "b")]) != 0
    assert "bad.jsonl line 1" in capsys.readouterr().err
