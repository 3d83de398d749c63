"""Loading calibration reports: every broken file is an EdgeSLMError naming the file and the field
(issue #24 item 6), a loaded report is usable and round-trips (no model, no network)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeslm
from edgeslm.escalation.calibration import CalibrationReport, Calibrator, build_report


def _reports() -> dict[str, CalibrationReport]:
    rng = np.random.default_rng(6)
    s = rng.random(400)
    y = rng.random(400) < s**3
    out = {m: build_report({"confidence": s}, y, np.ones(400, bool), budget=0.05, method=m)
           for m in ("isotonic", "platt")}
    out["one-class"] = build_report({"confidence": [0.2, 0.4]}, [1, 1], [1, 1], budget=0.05)  # NaN AUROC
    ident = copy.deepcopy(out["platt"])
    ident.calibrator = Calibrator("identity")
    out["identity"] = ident
    return out


REPORTS = _reports()
VALID = {k: r.to_dict() for k, r in REPORTS.items()}


def _write(path: Path, d: Any) -> Path:
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


def _broken(field: str, value: Any, base: str = "platt") -> dict[str, Any]:
    d = copy.deepcopy(VALID[base])
    *parents, key = field.split(".")
    at = d
    for p in parents:
        at = at[p]
    if value is _DROP:
        del at[key]
    else:
        at[key] = value
    return d


_DROP = object()


@pytest.mark.parametrize(("field", "value", "base", "says"), [
    ("calibrator", _DROP, "platt", "'calibrator' is missing"),
    ("calibrator", "platt", "platt", "'calibrator' must be an object, not the string 'platt'"),
    ("calibrator", None, "platt", "'calibrator' must be an object, not null"),
    ("calibrator.a", _DROP, "platt", "'calibrator.a' is missing"),
    ("calibrator.b", "1", "platt", "'calibrator.b' must be a number, not the string '1'"),
    ("calibrator.a", float("inf"), "platt", "'calibrator.a' must be a finite number, not inf"),
    ("calibrator.method", "spline", "platt", "'calibrator.method' must be"),
    ("calibrator.xs", [0.1], "isotonic", "must be lists of the same length"),
    ("calibrator.xs", [], "isotonic", "must be lists of the same length"),
    ("calibrator.ys", "0.5", "isotonic", "'calibrator.ys' must be a list of numbers"),
    ("calibrator.xs", _DROP, "isotonic", "'calibrator.xs' is missing"),
    ("threshold", "0.5", "platt", "'threshold' must be a number, not the string '0.5'"),
    ("threshold", float("nan"), "platt", "'threshold' must be a finite number, not nan"),
    ("threshold", float("-inf"), "platt", "'threshold' must be a finite number, not -inf"),
    ("threshold", None, "platt", "'threshold' must be a number, not null"),
    ("threshold", 10**400, "platt", "'threshold' is too large a number"),
    ("threshold", _DROP, "platt", "'threshold' is missing"),
    ("threshold_confidence", 1.5, "platt", "'threshold_confidence' must be within [0, 1], not 1.5"),
    ("budget", -0.1, "platt", "'budget' must be within [0, 1]"),
    ("budget", True, "platt", "'budget' must be a number, not the boolean true"),
    ("auroc", 7, "platt", "'auroc' must be within [0, 1], not 7"),
    ("ece", "high", "platt", "'ece' must be a number"),
    ("n", 0, "platt", "'n' must be 1 or more"),
    ("n", 2.5, "platt", "'n' must be a whole number"),
    ("n_invalid", 10**6, "platt", "'n_invalid' must be at most n"),
    ("ece_bins", _DROP, "platt", "'ece_bins' is missing"),
    ("score", 3, "platt", "'score' must be a non-empty string, not the number 3"),
    ("method", _DROP, "platt", "'method' is missing"),
    ("candidates", [], "platt", "'candidates' must be an object"),
    ("candidates", {"confidence": "x"}, "platt", "'candidates.confidence' must be a number"),
    ("warnings", "none", "platt", "'warnings' must be a list of strings"),
    ("model", 5, "platt", "'model' must be a string"),
])
def test_a_broken_field_is_named_with_the_file(tmp_path: Path, field: str, value: Any, base: str, says: str) -> None:
    path = _write(tmp_path / "report.json", _broken(field, value, base))
    with pytest.raises(edgeslm.InvalidRequestError) as e:
        CalibrationReport.load(path)
    assert says in e.value.message and str(path) in e.value.message, e.value.message
    assert "edgeslm calibrate" in (e.value.hint or "")


@pytest.mark.parametrize(("content", "says"), [
    (b"", "the file is empty"),
    (b"\xff\xfe{\x00}", "not UTF-8 text"),
    (b"{not json", "is not JSON"),
    (b"[1, 2]", "is not a calibration report: it holds a list of 2, not a JSON object"),
    (b"null", "it holds null, not a JSON object"),
    (b'"report"', "it holds the string 'report'"),
    (b"[" * 100_000 + b"]" * 100_000, "not a calibration report"),
    (b'{"version": 2}', "not a calibration report of this edgeslm version (its version: the number 2"),
    (b'{"calibrator": {}}', "its version: none"),
])
def test_a_file_that_is_not_a_report_is_named(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(content)
    with pytest.raises(edgeslm.InvalidRequestError) as e:
        CalibrationReport.load(path)
    assert says in e.value.message and str(path) in e.value.message, e.value.message
    assert e.value.hint


def test_a_folder_or_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(edgeslm.InvalidRequestError, match="is a folder, not a calibration report") as e:
        CalibrationReport.load(tmp_path)
    assert str(tmp_path) in e.value.message and e.value.hint
    with pytest.raises(edgeslm.InvalidRequestError, match="no calibration report at") as e:
        CalibrationReport.load(str(tmp_path / "missing.json"))
    assert e.value.hint
    with pytest.raises(edgeslm.InvalidRequestError, match="must be a str or a path"):
        CalibrationReport.load(3)  # type: ignore[arg-type]


def test_escalation_with_a_broken_report_file_refuses_it(tmp_path: Path) -> None:
    """A NaN threshold used to load, and then no score was ever below it: escalation was off."""
    path = _write(tmp_path / "report.json", _broken("threshold", float("nan")))
    assert "NaN" in path.read_text()
    with pytest.raises(edgeslm.InvalidRequestError, match="'threshold' must be a finite number"):
        edgeslm.Escalation(lambda req: "{}", min_confidence=str(path))
    with pytest.raises(edgeslm.InvalidRequestError, match="is a folder"):
        edgeslm.Escalation(lambda req: "{}", min_confidence=tmp_path)
    good = REPORTS["platt"]
    good.save(tmp_path / "good.json")
    esc = edgeslm.Escalation(lambda req: "{}", min_confidence=tmp_path / "good.json")
    assert esc.decide(None, None, None, scores={good.score: good.threshold - 1e-6}) == "low_confidence"  # type: ignore[arg-type]
    assert esc.decide(None, None, None, scores={good.score: good.threshold}) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_save_then_load_gives_an_equal_report(tmp_path: Path, name: str) -> None:
    rep = REPORTS[name]
    rep.save(tmp_path / "a.json")
    back = CalibrationReport.load(tmp_path / "a.json")
    assert back.to_dict() == rep.to_dict()
    if name != "one-class":  # every field finite: dataclass equality holds (NaN is never equal to itself)
        assert back == rep
    back.save(tmp_path / "b.json")
    assert (tmp_path / "b.json").read_bytes() == (tmp_path / "a.json").read_bytes()
    assert math.isnan(CalibrationReport.load(tmp_path / "b.json").auroc) == (name == "one-class")
    grid = np.linspace(-1, 2, 31)
    assert np.allclose(back.calibrator.apply(grid), rep.calibrator.apply(grid))


def test_hand_written_values_are_normalised_on_load(tmp_path: Path) -> None:
    d = _broken("n", 400.0)
    d.update(threshold=1, budget=0, auroc=None, candidates={"confidence": None})
    del d["warnings"], d["model"]
    rep = CalibrationReport.load(_write(tmp_path / "r.json", d))
    assert (rep.n, rep.threshold, rep.budget, rep.warnings, rep.model) == (400, 1.0, 0.0, [], "")
    assert isinstance(rep.n, int) and isinstance(rep.threshold, float)
    assert math.isnan(rep.auroc) and math.isnan(rep.candidates["confidence"])


# ------------------------------------------------------------------------------ property-based

_SPECIAL = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 10**400, -(10**30), -1, 2,
                            0, 1, 0.0, 0.25, 0.5, 1.0, 1e-320, "0.5", "", True, False, None, [], {}, [0.5], {"a": 1}])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value, as a key path."""
    out = [prefix]
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d[:3]):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def _documents(draw: st.DrawFn) -> bytes:
    """A random JSON value, a valid report with a few mutations (dropped keys, swapped types,
    NaN / inf / huge numbers, nested junk) or with other finite numbers, or a few raw bytes."""
    kind = draw(st.sampled_from(["mutated", "mutated", "retuned", "retuned", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "json":
        return json.dumps(draw(_JSON)).encode()
    d = copy.deepcopy(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(d)[1:]))
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        op = "number" if kind == "retuned" else draw(st.sampled_from(["drop", "special", "special", "junk"]))
        if op == "number":  # any finite number where a number was: odd but maybe valid
            if isinstance(parent[path[-1]], (int, float)) and not isinstance(parent[path[-1]], bool):
                parent[path[-1]] = draw(st.floats(allow_nan=False, allow_infinity=False) | st.integers())
        elif op == "drop":
            del parent[path[-1]]
        else:
            # a copy: _SPECIAL's lists and dicts are shared objects, and a later mutation inside one
            # would change it for every example (or make it contain itself)
            parent[path[-1]] = copy.deepcopy(draw(_SPECIAL if op == "special" else _JSON))
    return json.dumps(d).encode()


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_documents())
def test_load_returns_a_usable_report_or_an_edgeslm_error(tmp_path_factory: pytest.TempPathFactory,
                                                         doc: bytes) -> None:
    folder = tmp_path_factory.mktemp("cal", numbered=True)
    path = folder / "report.json"
    path.write_bytes(doc)
    try:
        rep = CalibrationReport.load(path)
    except edgeslm.EdgeSLMError as e:
        assert e.hint and e.message
        return
    assert math.isfinite(rep.threshold) and 0.0 <= rep.budget <= 1.0
    assert rep.calibrator.method in ("isotonic", "platt", "identity")
    for x in (-1e6, -1.0, 0.0, 0.25, 0.5, 1.0, 2.0, 1e6, rep.threshold):
        c = rep.confidence(x)
        assert isinstance(c, float) and 0.0 <= c <= 1.0, (x, c)
        assert isinstance(rep.escalates(x), bool)
    assert rep.escalates(rep.threshold) is False
    rep.save(folder / "again.json")
    again = CalibrationReport.load(folder / "again.json")
    assert json.dumps(again.to_dict()) == json.dumps(rep.to_dict())
