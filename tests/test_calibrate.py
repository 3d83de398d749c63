"""edgeslm.calibrate on the bundled model and the labeled set (a short smoke run), and its CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import edgeslm
from edgeslm.api.calibrate import fields_match
from edgeslm.bench.labeled import load_task, tasks
from edgeslm.escalation.calibration import CalibrationReport

from .conftest import requires_smollm2

N = 12  # keep the smoke run short: about 1.5 s an example on an idle laptop core


def test_labeled_set_is_complete_and_valid() -> None:
    from edgeslm.decoding.schema import make_validator

    names = tasks()
    assert len(names) >= 4
    total = 0
    for name in names:
        schema, examples = load_task(name)
        assert edgeslm.check_schema(schema).exact
        v = make_validator(schema)
        ids = [e["id"] for e in examples]
        assert len(set(ids)) == len(ids) and len({e["text"] for e in examples}) == len(examples)
        for e in examples:
            assert not list(v.iter_errors(e["expected"])), e["id"]
        total += len(examples)
    assert total >= 200


def test_training_pools_are_valid_and_never_overlap_the_scored_texts() -> None:
    """A task's ``pool.jsonl`` (teacher-labelled texts that benchmarks/distill.py only trains on)
    validates against the task's schema, names its title, city and date as the labels say, and
    shares no id or text with ``examples.jsonl`` (whose held-out split is what gets scored)."""
    import datetime
    import sys

    from edgeslm.bench.labeled import labeled_dir
    from edgeslm.decoding.schema import make_validator

    sys.path.insert(0, str(labeled_dir().parent))
    try:
        import distill  # benchmarks/distill.py
    finally:
        sys.path.remove(str(labeled_dir().parent))
    pooled = [n for n in tasks() if distill.load_pool(n)]
    assert "events" in pooled
    for name in pooled:
        schema, examples = load_task(name)
        pool = distill.load_pool(name)
        v = make_validator(schema)
        assert not {p["id"] for p in pool} & {e["id"] for e in examples}
        assert not {p["text"] for p in pool} & {e["text"] for e in examples}
        assert len({p["id"] for p in pool}) == len(pool) == len({p["text"] for p in pool})
        for p in pool:
            assert not list(v.iter_errors(p["expected"])), p["id"]
    for p in distill.load_pool("events"):
        got = p["expected"]
        assert f'"{got["title"]}"' in p["text"] and got["city"] in p["text"], p["id"]
        datetime.date.fromisoformat(got["date"])  # a real calendar date


def test_fields_match_rules() -> None:
    assert fields_match({"a": " Ann  Lee", "n": 2.0}, {"a": "ann lee", "n": 2})
    assert fields_match({"a": "x"}, {"a": "x", "b": None})  # missing == null
    assert not fields_match({"a": "x", "b": "y"}, {"a": "x"})
    assert not fields_match({"n": 2.01}, {"n": 2}) and not fields_match({"f": 1}, {"f": True})
    assert not fields_match({"l": [1, 2]}, {"l": [1]}) and fields_match({"l": [1, 2]}, {"l": [1, 2]})


@pytest.fixture(scope="module")
def report(smollm2: Any) -> CalibrationReport:
    schema, examples = load_task("events")
    seen: list[int] = []
    rep = edgeslm.calibrate(
        smollm2, examples[:N], schema=schema, budget=0.25, max_tokens=48,
        scores={"confidence": lambda x: x.confidence, "inverted": lambda x: 1.0 - x.confidence},
        progress=lambda i, n: seen.append(i),
    )
    assert seen == list(range(1, N + 1))
    return rep


@requires_smollm2
def test_calibrate_smoke_on_the_bundled_model(report: CalibrationReport) -> None:
    rep = report
    assert rep.n == N and 0 <= rep.n_invalid <= N and rep.model == "smollm2-135m"
    assert len(rep.schema_sha256) == 64 and rep.created
    for v in (rep.local_accuracy, rep.share_escalated, rep.accuracy_if_cloud_right, rep.threshold_confidence):
        assert 0.0 <= v <= 1.0
    assert rep.accuracy_if_cloud_right >= rep.local_accuracy
    assert rep.method == "platt"  # auto: a small sample
    assert rep.ece_bins == max(1, round(math.sqrt(N - rep.n_invalid)))
    assert any(f"only {N} examples" in w for w in rep.warnings)
    assert set(rep.candidates) == {"confidence", "inverted"}
    a, b = rep.candidates["confidence"], rep.candidates["inverted"]
    if math.isfinite(a):  # both outcomes seen: the plug-in scores rank exactly opposite ways
        assert a + b == pytest.approx(1.0) and rep.score == ("confidence" if a >= b else "inverted")
        assert rep.auroc == max(a, b) and 0.0 <= rep.ece <= 1.0 and 0.0 <= rep.ece_raw <= 1.0
    # the threshold keeps the in-sample hand-offs within the budget (invalid ones count first)
    assert math.isfinite(rep.threshold)


@requires_smollm2
def test_calibrate_report_round_trips_into_an_escalation(report: CalibrationReport, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    report.save(path)
    back = CalibrationReport.load(path)
    assert back.to_dict() == report.to_dict()
    esc = edgeslm.Escalation(lambda req: "{}", min_confidence=str(path))
    for s in (0.0, report.threshold - 1e-9, report.threshold, 1.0):
        trig = esc.decide(None, None, None, scores={report.score: s})  # type: ignore[arg-type]
        assert (trig == "low_confidence") == (s < report.threshold)


def test_calibrate_input_errors() -> None:
    with pytest.raises(edgeslm.InvalidRequestError):
        edgeslm.calibrate(object(), [{"text": "a", "expected": {}}], schema={"type": "object"})  # < 2 examples
    with pytest.raises(edgeslm.InvalidRequestError):
        edgeslm.calibrate(object(), [{"text": "a"}, {"text": "b"}], schema={"type": "object"})
    with pytest.raises(edgeslm.InvalidRequestError):
        edgeslm.calibrate(object(), [("a", {}), ("b", {})], schema={"type": "object"}, budget=2)


def test_calibrate_with_a_scripted_model_counts_invalid_and_wrong() -> None:
    """No real model: a stand-in whose answers and confidences are known."""

    class Scripted:
        name = "scripted"

        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def extract(self, text: str, schema: Any, **kw: Any) -> Any:
            self.calls.append(kw)
            i = int(text)
            if i % 10 == 0:
                raise edgeslm.ExtractionFailed("no output validated")
            ok = i % 10 >= 4  # 4, 5, ... 9 right; 1, 2, 3 wrong (with low scores)
            return edgeslm.Extraction(data={"v": i if ok else -1}, confidence=(i % 10) / 10, raw="",
                                      usage=edgeslm.Usage())

    m = Scripted()
    examples = [{"text": str(i), "expected": {"v": i}} for i in range(1, 121)]
    rep = edgeslm.calibrate(m, examples, schema={"type": "object"}, budget=0.5)
    assert m.calls[0]["temperature"] == 0.0 and len(m.calls) == 120
    assert rep.n_invalid == 12 and rep.local_accuracy == pytest.approx(0.6)
    assert rep.auroc == 1.0 and rep.method == "isotonic"  # 108 valid answers: enough for isotonic
    # 60 hand-offs allowed, 12 used by invalid answers: the 49th smallest valid score (0.5) is the cut
    assert rep.threshold == pytest.approx(0.5)
    assert rep.errors_caught == 1.0 and rep.accuracy_if_cloud_right == 1.0 and rep.share_escalated <= 0.6
    assert rep.confidence(0.2) == 0.0 and rep.confidence(0.8) == 1.0


def test_render_and_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from edgeslm.cli import main
    from edgeslm.cli.calibrate import render
    from edgeslm.escalation.calibration import build_report

    rep = build_report({"confidence": [0.1, 0.3, 0.6, 0.9]}, [0, 1, 1, 1], [1, 1, 1, 1], budget=0.25)
    con = Console(record=True, width=120)
    render(rep, con)
    text = con.export_text()
    assert "AUROC of 'confidence'" in text and "1.000" in text and "only 4 examples" in text
    assert main(["calibrate"]) == 2 and "--task" in capsys.readouterr().err
    assert main(["calibrate", "--task", "no-such-task"]) == 2


@requires_smollm2
def test_cli_calibrate_on_a_task(smollm2: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from edgeslm.cli import main

    class Borrowed:  # the session's model, not closed by the command
        def __enter__(self) -> Any:
            return smollm2

        def __exit__(self, *a: object) -> None:
            pass

    monkeypatch.setattr(edgeslm, "load", lambda *a, **k: Borrowed())
    out = tmp_path / "r.json"
    assert main(["calibrate", "--task", "events", "--limit", "4", "--max-tokens", "48", "--budget", "0.25",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Calibration of smollm2-135m" in printed and "share escalated (budget 25 %)" in printed
    assert json.loads(out.read_text())["n"] == 4
