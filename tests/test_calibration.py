"""Calibration math on synthetic scores with known answers (no model, no network)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

import edgeslm
from edgeslm.escalation.calibration import (
    CalibrationReport,
    Calibrator,
    auroc,
    build_report,
    ece,
    isotonic_fit,
    pav,
    platt_fit,
    threshold_for_budget,
    threshold_for_count,
)


def _brute_auroc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


# ----------------------------------------------------------------------------------------- AUROC


def test_auroc_separable_reversed_and_tied() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5] * 6, [0, 1, 0, 1, 1, 0]) == 0.5
    # pos 0.4 vs (0.1, 0.4) = 1 + 0.5; pos 0.8 vs both = 2 -> 3.5 / 4
    assert auroc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_auroc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(7)
    s = np.round(rng.random(300), 1)  # many ties
    y = (rng.random(300) < s).astype(int)
    assert auroc(s, y) == pytest.approx(_brute_auroc(s, y), abs=1e-12)


def test_auroc_of_random_scores_is_near_one_half() -> None:
    rng = np.random.default_rng(0)
    s, y = rng.random(4000), rng.integers(0, 2, 4000)
    assert abs(auroc(s, y) - 0.5) < 0.05  # sd is about 0.009 here


def test_auroc_rejects_bad_input() -> None:
    with pytest.raises(edgeslm.InvalidRequestError):
        auroc([0.1, 0.2], [0, 2])
    with pytest.raises(edgeslm.InvalidRequestError):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(edgeslm.InvalidRequestError):
        auroc([0.1], [0, 1])


# ----------------------------------------------------------------------------------------- ECE


def test_ece_zero_when_calibrated_and_known_values() -> None:
    p = [0.2] * 10 + [0.8] * 10
    y = [1, 1] + [0] * 8 + [1] * 8 + [0, 0]
    assert ece(p, y, 2) == pytest.approx(0.0)
    assert ece(p, y, 10, "width") == pytest.approx(0.0)
    assert ece([0.9] * 4, [1, 0, 0, 0], 3) == pytest.approx(0.65)
    # width, 2 bins: [0.1, 0.3] mean 0.2 vs 0.5; [0.6, 0.9] mean 0.75 vs 1.0 -> (0.3 * 2 + 0.25 * 2) / 4
    assert ece([0.1, 0.3, 0.6, 0.9], [0, 1, 1, 1], 2, "width") == pytest.approx(0.275)


def test_ece_equal_mass_keeps_ties_in_one_bin() -> None:
    # six tied values must share a bin: if they were split, the bins would disagree with the labels
    p = [0.5] * 6 + [0.9] * 2
    y = [1, 1, 1, 0, 0, 0, 1, 1]
    # bins: {0.5 x6}: |0.5 - 0.5| = 0; {0.9 x2}: |0.9 - 1| * 2 / 8
    assert ece(p, y, 4) == pytest.approx(0.2 / 8)


def test_ece_equal_mass_bins_are_balanced() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(1000)
    y = (rng.random(1000) < p).astype(int)
    assert ece(p, y, 10) < 0.05  # calibrated by construction
    assert ece(np.clip(p + 0.3, 0, 1), y, 10) > 0.2  # overconfident by 0.3 (less at the top)


# ----------------------------------------------------------------------------------------- isotonic


def test_pav_known_solutions() -> None:
    assert pav([1, 3, 2, 4, 3, 5]).tolist() == pytest.approx([1, 2.5, 2.5, 3.5, 3.5, 5])
    assert pav([3, 2, 1]).tolist() == pytest.approx([2, 2, 2])
    assert pav([1, 0], [3, 1]).tolist() == pytest.approx([0.75, 0.75])
    assert pav([0, 1, 1]).tolist() == [0, 1, 1]


def test_pav_is_monotone_and_keeps_the_weighted_mean() -> None:
    rng = np.random.default_rng(3)
    y, w = rng.random(200), rng.random(200) + 0.1
    fit = pav(y, w)
    assert np.all(np.diff(fit) >= -1e-12)
    assert np.sum(fit * w) == pytest.approx(np.sum(y * w))


def test_isotonic_fit_pools_ties_and_compresses_blocks() -> None:
    # scores 0.1 (labels 0,0), 0.2 (1), 0.3 (0), 0.4 (1, 1): means 0, 1, 0, 1 -> PAV 0, .5, .5, 1
    xs, ys = isotonic_fit([0.1, 0.1, 0.2, 0.3, 0.4, 0.4], [0, 0, 1, 0, 1, 1])
    assert xs == [0.1, 0.2, 0.3, 0.4]
    assert ys == pytest.approx([0.0, 0.5, 0.5, 1.0])
    xs, ys = isotonic_fit([0.1, 0.2, 0.3, 0.4, 0.5], [0, 0, 0, 0, 1])
    assert xs == [0.1, 0.4, 0.5] and ys == [0.0, 0.0, 1.0]  # interior of the flat block dropped
    cal = Calibrator("isotonic", xs, ys)
    assert cal(0.0) == 0.0 and cal(0.9) == 1.0 and cal(0.45) == pytest.approx(0.5)
    grid = cal.apply(np.linspace(-1, 2, 301))
    assert np.all(np.diff(grid) >= 0)


# ----------------------------------------------------------------------------------------- Platt


def test_platt_recovers_a_known_logistic() -> None:
    rng = np.random.default_rng(11)
    s = rng.random(20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(4.0 * s - 2.0)))).astype(int)
    a, b = platt_fit(s, y, smooth=False)
    assert a == pytest.approx(4.0, abs=0.25) and b == pytest.approx(-2.0, abs=0.15)


def test_platt_stays_finite_on_separable_data() -> None:
    a, b = platt_fit([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert math.isfinite(a) and math.isfinite(b) and a > 0
    cal = Calibrator("platt", a=a, b=b)
    assert 0.0 < cal(0.1) < 0.5 < cal(0.9) < 1.0


# ----------------------------------------------------------------------------------------- budget


def test_threshold_for_budget_on_the_fitting_data() -> None:
    s = np.arange(100) / 100.0
    t = threshold_for_budget(s, 0.05)
    assert t == 0.05 and np.mean(s < t) == 0.05  # exactly 5 below, the sixth stays
    assert threshold_for_budget(s, 0.0) == 0.0 and np.mean(s < 0.0) == 0
    assert np.mean(s < threshold_for_budget(s, 1.0)) == 1.0
    assert threshold_for_budget(s, 0.054) == 0.05  # floor(5.4) = 5


def test_threshold_tie_rule_never_exceeds_the_budget() -> None:
    s = [0.2, 0.5, 0.5, 0.5, 0.5, 0.9]
    t = threshold_for_count(s, 2)  # the third smallest is 0.5: only 0.2 falls below it
    assert t == 0.5 and sum(v < t for v in s) == 1
    assert threshold_for_count([0.7] * 10, 3) == 0.7  # all tied: nothing escalates
    with pytest.raises(edgeslm.InvalidRequestError):
        threshold_for_budget(s, 1.5)


def test_budget_holds_on_held_out_data() -> None:
    rng = np.random.default_rng(5)
    budget = 0.1
    fit, held = rng.beta(5, 2, 2000), rng.beta(5, 2, 50000)
    share = float(np.mean(held < threshold_for_budget(fit, budget)))
    slack = 3 * math.sqrt(budget * (1 - budget) / len(fit))
    assert budget - slack <= share <= budget + slack


# ----------------------------------------------------------------------------------------- report


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that are overconfident: P(right | s) = s ** 3."""
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    return s, rng.random(n) < s**3


def test_report_calibrates_an_overconfident_score() -> None:
    s, y = _synthetic(3000, 2)
    noise = np.random.default_rng(9).random(3000)
    rep = build_report({"noise": noise, "confidence": s}, y, np.ones(3000, bool), budget=0.2)
    assert rep.score == "confidence"  # picked by AUROC over the useless candidate
    assert rep.candidates["noise"] == pytest.approx(0.5, abs=0.05)
    assert rep.auroc == pytest.approx(auroc(s, y))
    assert rep.ece_raw > 0.2 and rep.ece < 0.05  # raw s overstates P(right); calibrated does not
    assert rep.share_escalated == pytest.approx(0.2, abs=0.03)
    assert rep.accuracy_if_cloud_right >= rep.local_accuracy
    # the errors caught are the wrong answers below the threshold: most of them, as P(right) = s^3
    wrong = ~y
    assert rep.errors_caught == pytest.approx(np.mean(s[wrong] < rep.threshold), abs=0.05)
    assert rep.threshold_confidence == pytest.approx(rep.threshold**3, abs=0.05)


def test_report_counts_invalid_answers_against_the_budget() -> None:
    s, y = _synthetic(1000, 4)
    valid = np.ones(1000, bool)
    valid[:30] = False  # 3 % invalid
    y = y & valid
    rep = build_report({"confidence": s}, y, valid, budget=0.1)
    assert rep.n_invalid == 30
    assert np.sum(s[valid] < rep.threshold) + 30 <= 100  # within the budget on the fitting data
    assert rep.share_escalated <= 0.1 + 0.03
    over = build_report({"confidence": s}, y, valid, budget=0.02)
    assert any("invalid" in w for w in over.warnings)
    assert np.sum(s[valid] < over.threshold) == 0


def test_report_with_one_class_warns_and_stays_finite() -> None:
    args = ({"confidence": [0.2, 0.4, 0.9, 0.95]}, [1, 1, 1, 1], [1, 1, 1, 1])
    rep = build_report(*args, budget=0.25, method="isotonic")
    assert math.isnan(rep.auroc) and any("undefined" in w for w in rep.warnings)
    assert rep.confidence(0.5) == 1.0
    rep = build_report(*args, budget=0.25)  # auto: Platt on a small sample, with smoothed targets
    assert rep.method == "platt" and 0.5 < rep.confidence(0.5) < 1.0


def test_auto_method_depends_on_the_sample_size() -> None:
    s, y = _synthetic(99, 1)
    assert build_report({"confidence": s}, y, np.ones(99, bool), budget=0.1).method == "platt"
    s, y = _synthetic(100, 1)
    assert build_report({"confidence": s}, y, np.ones(100, bool), budget=0.1).method == "isotonic"
    with pytest.raises(edgeslm.InvalidRequestError):
        build_report({"confidence": s}, y, np.ones(100, bool), budget=0.1, method="spline")


def test_report_and_calibrator_round_trip(tmp_path) -> None:
    s, y = _synthetic(400, 6)
    for method in ("isotonic", "platt"):
        rep = build_report({"confidence": s}, y, np.ones(400, bool), budget=0.05, method=method)
        path = tmp_path / f"{method}.json"
        rep.save(path)
        back = CalibrationReport.load(path)
        assert back.to_dict() == rep.to_dict()
        grid = np.linspace(0, 1, 50)
        assert np.allclose(back.calibrator.apply(grid), rep.calibrator.apply(grid))
    rep = build_report({"confidence": [0.2, 0.4]}, [1, 1], [1, 1], budget=0.05)
    rep.save(tmp_path / "nan.json")
    assert json.loads((tmp_path / "nan.json").read_text())["auroc"] is None  # strict JSON
    assert math.isnan(CalibrationReport.load(tmp_path / "nan.json").auroc)


def test_report_load_errors(tmp_path) -> None:
    with pytest.raises(edgeslm.InvalidRequestError, match="no calibration report"):
        CalibrationReport.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"version": 99}')
    with pytest.raises(edgeslm.InvalidRequestError, match="not a calibration report"):
        CalibrationReport.load(tmp_path / "bad.json")
    with pytest.raises(edgeslm.InvalidRequestError):
        Calibrator.from_dict({"method": "isotonic", "xs": [0.5, 0.1], "ys": [0, 1]})
