"""The escalation view: exact-object accuracy against the share of requests handed to a cloud model,
from the confidences and outcomes measured on the task in this run.

The rule is the one :class:`edgeslm.Escalation` and :func:`edgeslm.calibrate` use: an item with no
valid local answer always escalates (``on_invalid``) and uses up budget first; then the valid items
whose confidence is **strictly below** a threshold escalate, the threshold placed by
:func:`edgeslm.escalation.calibration.threshold_for_count` so that at most ``floor(share * n)`` items
escalate in all (ties at the threshold stay local, so a few less may go). The budgeted threshold is
the one :func:`edgeslm.escalation.calibration.build_report` fits for ``--escalation-budget``, with its
calibrated confidence; escalated sets grow with the share (each contains the one before).

An escalated item counts as right with probability ``cloud_accuracy`` (an assumption, printed as
such), unless the cloud was actually asked (``--cloud-url``): then it counts as right when the cloud
answered with data that matches the expected object, and as the local answer when the hand-off
failed (a failed hand-off never costs the local answer).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import InvalidRequestError

__all__ = ["DEFAULT_SHARES", "ask_cloud", "escalation_order", "escalation_view"]

DEFAULT_SHARES = (0.0, 0.02, 0.05, 0.10, 0.15, 0.20)


def _allowed(share: float, n: int, n_invalid: int) -> int:
    """Valid items that may escalate on low confidence at this share (invalid ones go first)."""
    return max(0, math.floor(share * n + 1e-9) - n_invalid)


def escalated_at(share: float, confidence: Sequence[float | None], valid: Sequence[bool]) -> np.ndarray:
    """Which items escalate at *share*: the invalid ones, then valid ones strictly below the threshold."""
    from ..escalation.calibration import threshold_for_count

    ok = np.asarray(valid, dtype=bool)
    n = ok.size
    esc = ~ok
    if ok.any():
        s = np.array([c if v else np.nan for c, v in zip(confidence, valid, strict=True)], dtype=float)
        thr = threshold_for_count(s[ok], _allowed(share, n, int((~ok).sum())))
        esc = esc | (ok & (s < thr))
    return esc


def escalation_order(confidence: Sequence[float | None], valid: Sequence[bool], max_share: float) -> list[int]:
    """Indexes of the items that escalate at *max_share* (the ones worth asking a real cloud about)."""
    return [int(i) for i in np.flatnonzero(escalated_at(max_share, confidence, valid))]


def escalation_view(
    confidence: Sequence[float | None],
    correct: Sequence[bool],
    valid: Sequence[bool],
    *,
    shares: Sequence[float] = DEFAULT_SHARES,
    budget: float = 0.05,
    cloud_accuracy: float = 1.0,
    cloud_correct: Mapping[int, bool | None] | None = None,
) -> dict[str, Any]:
    """Accuracy at each share escalated, the budget's calibrated threshold, and the assumption used.

    ``confidence[i]`` is the raw confidence of item *i* (ignored where ``valid[i]`` is false),
    ``correct[i]`` whether its local answer was right. ``cloud_correct`` (item -> right, or ``None``
    when the hand-off failed) replaces the ``cloud_accuracy`` assumption for the items it covers.
    """
    from ..escalation.calibration import build_report

    y = np.asarray(correct, dtype=bool)
    ok = np.asarray(valid, dtype=bool)
    n = int(y.size)
    if n == 0 or ok.size != n or len(confidence) != n:
        raise InvalidRequestError("the escalation view needs one confidence, outcome and validity per item",
                                  hint="run the task section first")
    if not 0.0 <= cloud_accuracy <= 1.0:
        raise InvalidRequestError(f"cloud accuracy must be within [0, 1], not {cloud_accuracy}",
                                  hint="e.g. --cloud-accuracy 0.95")
    shares = sorted({float(s) for s in (*shares, budget)})
    for s in shares:
        if not 0.0 <= s <= 1.0:
            raise InvalidRequestError(f"a share escalated must be within [0, 1], not {s}", hint="e.g. 0.05 for 5 %")
    scores = np.array([c if v and c is not None else np.nan for c, v in zip(confidence, valid, strict=True)],
                      dtype=float)
    measured = dict(cloud_correct or {})

    report = None
    calibration: dict[str, Any] = {"available": False}
    if ok.any() and n >= 2:
        report = build_report({"confidence": scores}, y, ok, budget=budget)
        calibration = {
            "available": True, "score": report.score, "method": report.method, "auroc": _num(report.auroc),
            "ece": _num(report.ece), "threshold": report.threshold,
            "threshold_confidence": _num(report.threshold_confidence),
            "share_escalated_out_of_fold": _num(report.share_escalated),
            "errors_caught_out_of_fold": _num(report.errors_caught), "warnings": list(report.warnings),
        }
    else:
        calibration["why"] = "no valid local answer to calibrate on" if n >= 2 else "fewer than 2 items"

    wrong = ~y
    curve = []
    for share in shares:
        esc = escalated_at(share, list(scores), list(ok))
        right = 0.0
        asked = 0
        for i in range(n):
            if not esc[i]:
                right += bool(y[i])
            elif i in measured:
                asked += 1
                got = measured[i]
                right += bool(y[i]) if got is None else bool(got)  # failed hand-off: the local answer stands
            else:
                right += cloud_accuracy
        thr = conf = None
        if ok.any():
            from ..escalation.calibration import threshold_for_count

            thr = threshold_for_count(scores[ok], _allowed(share, n, int((~ok).sum())))
            if report is not None and math.isfinite(thr):
                conf = _num(report.confidence(thr))
        k = int(esc.sum())
        curve.append({
            "share": share, "escalated": k, "share_escalated": k / n, "accuracy": right / n,
            "local_errors_caught": (int((esc & wrong).sum()) / int(wrong.sum())) if wrong.any() else None,
            "threshold": thr if thr is None or math.isfinite(thr) else None, "threshold_confidence": conf,
            "cloud_answers_used": asked, "budgeted": math.isclose(share, budget),
        })
    return {
        "items": n, "invalid": int((~ok).sum()), "local_accuracy": float(y.mean()), "budget": float(budget),
        "cloud_accuracy_assumed": None if cloud_correct is not None else cloud_accuracy,
        "calibration": calibration, "curve": curve,
    }


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def ask_cloud(
    items: Sequence[Mapping[str, Any]],
    *,
    url: str,
    model: str,
    api_key: str | None = None,
    timeout: float = 30.0,
    compare: Callable[[Any, Any], bool],
    tick: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Ask an OpenAI-compatible server for each item (``{"text", "schema", "expected"}``), through
    :class:`edgeslm.OpenAICompatible` and :class:`edgeslm.Escalation` (validated against the schema,
    never raises for what the server does). Returns per item ``right`` (``None`` when the hand-off
    failed), ``error``, ``latency_s``, and the totals."""
    from ..api.escalate import extraction_request
    from ..escalation.policy import Escalation
    from ..escalation.targets import OpenAICompatible

    esc = Escalation(OpenAICompatible(url, model, api_key), timeout=timeout)
    rows = []
    for j, item in enumerate(items):
        req = extraction_request(item["text"], item["schema"])
        req.trigger = "low_confidence"
        out = esc.escalate(req)
        rows.append({"right": bool(compare(out.data, item["expected"])) if out.escalated else None,
                     "error": out.error, "latency_s": out.latency_s, "model": out.model})
        if tick:
            tick(j + 1)
    lat = [r["latency_s"] for r in rows if r["right"] is not None]
    return {
        "url": url, "model": model, "asked": len(rows), "answered": sum(r["right"] is not None for r in rows),
        "right": sum(bool(r["right"]) for r in rows), "latency_p50_s": statistics.median(lat) if lat else None,
        "errors": sorted({r["error"] for r in rows if r["error"]})[:5], "rows": rows,
    }
