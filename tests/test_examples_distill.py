"""examples/distill.py end to end, bounded: a teacher on 127.0.0.1 (real HTTP), edgeslm teach, a few
fine-tune steps on the bundled SmolLM2, and the bench's side-by-side table of base and base+adapter."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import pytest

from ._cloud_standin import CloudStandin
from ._lora import missing_train_deps
from .conftest import requires_smollm2

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [requires_smollm2,
              pytest.mark.skipif(bool(missing_train_deps()) or importlib.util.find_spec("openai") is None,
                                 reason='needs the train and cloud extras: pip install -e ".[dev]"')]


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("distill_example", ROOT / "examples" / "distill.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_distill_example_teaches_trains_and_compares(tmp_path: Path) -> None:
    from edgeslm.bench.labeled import load_task

    _, rows = load_task("contacts")
    gold = {r["text"]: r["expected"] for r in rows}
    ex = _example()
    out = io.StringIO()
    with CloudStandin(lambda body: {"content": json.dumps(gold[body["messages"][-1]["content"]])}) as cloud, \
            contextlib.redirect_stdout(out):
        code = ex.main(["--teacher", cloud.url, "--model", "big-model", "--train", "8", "--held-out", "3",
                        "--max-steps", "3", "--epochs", "2", "--out", str(tmp_path)])
        asked = len(cloud.requests)
    text = out.getvalue()
    assert code == 0, text
    assert asked == 8 and len((tmp_path / "train.jsonl").read_text().splitlines()) == 8
    assert "8 labeled" in text and "3 steps" in text
    assert "Adapters: each base+adapter beside its base" in text
    assert "smollm2-135m+adapter:" in text and (tmp_path / "adapter" / "adapter.gguf").is_file()
