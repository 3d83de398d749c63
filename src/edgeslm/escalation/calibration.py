"""Confidence calibration in plain numpy: ranking quality, calibration error, calibrators, budgets.

Conventions used everywhere here:

* a *score* is higher when the local answer is more likely right; a *label* is 1 when it was
  right (all fields), 0 when not;
* a request is escalated when its score is **strictly below** the threshold; a score equal to
  the threshold stays local.

What is here: :func:`auroc` (ties count one half), :func:`ece` (equal-mass bins by default),
isotonic regression (:func:`isotonic_fit`, pool-adjacent-violators) and Platt scaling
(:func:`platt_fit`), :func:`threshold_for_budget`, a :class:`Calibrator` that maps a raw score to
a probability and round-trips through JSON, and the :class:`CalibrationReport` that
:func:`edgeslm.calibrate` returns and :class:`edgeslm.Escalation` accepts as ``min_confidence``.

Over ~450 lines on purpose: the ranking and calibration metrics, the two calibrators, the threshold
choice and the report's save and load (untrusted JSON, checked field by field) make one report.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from .._errors import InvalidRequestError, json_kind

__all__ = [
    "CalibrationReport",
    "Calibrator",
    "auroc",
    "build_report",
    "ece",
    "isotonic_fit",
    "pav",
    "platt_fit",
    "threshold_for_budget",
    "threshold_for_count",
]

ArrayLike = Sequence[float] | np.ndarray


def _pair(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels, dtype=float).ravel()
    if s.shape != y.shape:
        raise InvalidRequestError(f"{s.size} scores but {y.size} labels", hint="pass one label per score")
    if not np.all(np.isfinite(s)):
        raise InvalidRequestError("scores must be finite numbers", hint="drop or replace NaN / inf scores")
    if not np.all((y == 0) | (y == 1)):
        raise InvalidRequestError("labels must be 0/1 (or bools)", hint="1 = the local answer was right")
    return s, y


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve: the chance a random right answer scores above a random wrong one.

    Ties count one half (Mann-Whitney U with average ranks). ``nan`` when only one class is present.
    """
    s, y = _pair(scores, labels)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = avg_rank[inv]
    u = ranks[y == 1].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def ece(
    probs: ArrayLike, labels: ArrayLike, n_bins: int = 10, strategy: Literal["mass", "width"] = "mass"
) -> float:
    """Expected calibration error: ``sum_b (n_b / N) * |mean(prob_b) - mean(label_b)|``.

    ``strategy="mass"`` (default): bins hold about equal numbers of items; their edges are
    quantiles of *probs* and equal values always share a bin (so bins can be uneven when many
    values tie, as isotonic outputs do). ``"width"``: ``n_bins`` equal intervals of [0, 1].
    """
    p, y = _pair(probs, labels)
    if n_bins < 1:
        raise InvalidRequestError("n_bins must be >= 1", hint="use 10 bins, fewer for small samples")
    if p.size == 0:
        return float("nan")
    if strategy == "width":
        idx = np.clip(np.floor(np.clip(p, 0.0, 1.0) * n_bins).astype(int), 0, n_bins - 1)
    elif strategy == "mass":
        inner = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])) if n_bins > 1 else np.array([])
        idx = np.searchsorted(inner, p, side="right")
    else:
        raise InvalidRequestError(f"unknown ECE strategy {strategy!r}", hint='use "mass" or "width"')
    gap = np.bincount(idx, weights=p - y)  # per bin: sum(prob) - sum(label)
    return float(np.abs(gap).sum() / p.size)


def pav(y: ArrayLike, w: ArrayLike | None = None) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing sequence closest to *y* in weighted least squares."""
    yv = np.asarray(y, dtype=float).ravel()
    wv = np.ones_like(yv) if w is None else np.asarray(w, dtype=float).ravel()
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(yv, wv, strict=True):
        means.append(float(yi))
        weights.append(float(wi))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m2, w2, n2 = means.pop(), weights.pop(), sizes.pop()
            wt = weights[-1] + w2
            means[-1] = (means[-1] * weights[-1] + m2 * w2) / wt if wt > 0 else (means[-1] + m2) / 2
            weights[-1] = wt
            sizes[-1] += n2
    return np.repeat(np.array(means), sizes)


def isotonic_fit(scores: ArrayLike, labels: ArrayLike) -> tuple[list[float], list[float]]:
    """Fit a non-decreasing map score -> P(right); return its knots ``(xs, ys)``.

    Equal scores are pooled first (their mean label, weighted by count), then PAV runs over the
    distinct scores. Only the ends of each constant block are kept; :meth:`Calibrator.apply`
    interpolates linearly between knots and holds the end values outside them.
    """
    s, y = _pair(scores, labels)
    if s.size == 0:
        raise InvalidRequestError("isotonic_fit needs at least one score", hint="pass labeled scores")
    xs, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    means = np.bincount(inv, weights=y) / counts
    fitted = pav(means, counts)
    keep = np.ones(xs.size, dtype=bool)
    keep[1:-1] = ~((fitted[1:-1] == fitted[:-2]) & (fitted[1:-1] == fitted[2:]))  # interior of a flat block
    return [float(v) for v in xs[keep]], [float(v) for v in fitted[keep]]


def platt_fit(scores: ArrayLike, labels: ArrayLike, *, smooth: bool = True, max_iter: int = 100) -> tuple[float, float]:
    """Fit ``P(right) = 1 / (1 + exp(-(a * score + b)))`` by Newton's method on the log loss.

    ``smooth=True`` uses Platt's targets ``(n1 + 1) / (n1 + 2)`` and ``1 / (n0 + 2)`` instead of
    1 and 0, which keeps the fit finite on separable data (Lin, Lin & Weng 2007).
    """
    s, y = _pair(scores, labels)
    n1 = float(y.sum())
    n0 = float(y.size - n1)
    if s.size == 0:
        raise InvalidRequestError("platt_fit needs at least one score", hint="pass labeled scores")
    t = np.where(y == 1, (n1 + 1) / (n1 + 2), 1 / (n0 + 2)) if smooth else y
    a, b = 0.0, math.log((n1 + 1) / (n0 + 1))

    def loss(a_: float, b_: float) -> float:
        z = a_ * s + b_
        return float(np.sum(np.logaddexp(0, z) - t * z))  # -sum(t log p + (1-t) log(1-p))

    cur = loss(a, b)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(a * s + b)))
        g = np.array([np.sum((p - t) * s), np.sum(p - t)])
        wts = p * (1 - p)
        h = np.array([[np.sum(wts * s * s), np.sum(wts * s)], [np.sum(wts * s), np.sum(wts)]]) + 1e-12 * np.eye(2)
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            break
        lr = 1.0
        while lr > 1e-10:  # backtracking keeps each step a descent step
            na, nb = a - lr * step[0], b - lr * step[1]
            new = loss(na, nb)
            if new <= cur + 1e-12:
                break
            lr /= 2
        else:
            break
        done = abs(cur - new) < 1e-10 * max(1.0, abs(cur))
        a, b, cur = float(na), float(nb), new
        if done:
            break
    return a, b


def threshold_for_count(scores: ArrayLike, k: int) -> float:
    """The largest threshold with at most *k* scores strictly below it.

    That is the (k+1)-th smallest score: scores tied with it stay local, so ties can only make
    fewer than *k* go below. ``k >= len(scores)`` gives a threshold just above the largest score.
    """
    s = np.sort(np.asarray(scores, dtype=float).ravel())
    if s.size == 0:
        raise InvalidRequestError("no scores to place a threshold in", hint="pass at least one scored example")
    k = max(0, int(k))
    if k >= s.size:
        return float(np.nextafter(s[-1], np.inf))
    return float(s[k])


def threshold_for_budget(scores: ArrayLike, budget: float) -> float:
    """The largest threshold that sends at most ``budget`` of *scores* below it (see the tie rule
    in :func:`threshold_for_count`): ``k = floor(budget * n)``."""
    if not 0.0 <= budget <= 1.0:
        raise InvalidRequestError(f"budget must be within [0, 1], not {budget}", hint="e.g. budget=0.05 for 5 %")
    n = np.asarray(scores).size
    return threshold_for_count(scores, math.floor(budget * n + 1e-9))


@dataclass
class Calibrator:
    """A fitted map from a raw score to a probability that the answer is right.

    ``method`` is ``"isotonic"`` (knots ``xs``/``ys``), ``"platt"`` (``a``, ``b``) or
    ``"identity"`` (the score is used as it is).
    """

    method: Literal["isotonic", "platt", "identity"] = "identity"
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    a: float = 1.0
    b: float = 0.0

    @classmethod
    def fit(cls, scores: ArrayLike, labels: ArrayLike, method: str = "isotonic") -> Calibrator:
        """Fit on labeled scores."""
        if method == "isotonic":
            xs, ys = isotonic_fit(scores, labels)
            return cls("isotonic", xs, ys)
        if method == "platt":
            a, b = platt_fit(scores, labels)
            return cls("platt", a=a, b=b)
        if method == "identity":
            _pair(scores, labels)
            return cls("identity")
        raise InvalidRequestError(f"unknown calibration method {method!r}", hint='use "isotonic" or "platt"')

    def apply(self, scores: ArrayLike) -> np.ndarray:
        """Calibrated probabilities for an array of scores."""
        s = np.asarray(scores, dtype=float)
        if self.method == "isotonic":
            return np.clip(np.interp(s, self.xs, self.ys), 0.0, 1.0)
        if self.method == "platt":
            with np.errstate(over="ignore"):  # a huge slope saturates at 0 or 1
                return 1.0 / (1.0 + np.exp(-(self.a * s + self.b)))
        return np.clip(s, 0.0, 1.0)

    def __call__(self, score: float) -> float:
        return float(self.apply(np.array([score]))[0])

    def to_dict(self) -> dict[str, Any]:
        if self.method == "isotonic":
            return {"method": "isotonic", "xs": self.xs, "ys": self.ys}
        if self.method == "platt":
            return {"method": "platt", "a": self.a, "b": self.b}
        return {"method": "identity"}

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "calibrator", prefix: str = "") -> Calibrator:
        """The calibrator :meth:`to_dict` wrote; :class:`InvalidRequestError` naming the field when
        *d* is not one (*source* and *prefix* say where it was read, for the message)."""
        if not isinstance(d, dict):
            raise _bad(source, prefix.rstrip(".") or "calibrator", f"must be an object, not {json_kind(d)}")
        method = d.get("method")
        if method == "isotonic":
            xs, ys = _numbers(d, "xs", source, prefix), _numbers(d, "ys", source, prefix)
            if not xs or len(xs) != len(ys):
                raise _bad(source, f"{prefix}xs", f"and {prefix}ys must be lists of the same length (at least "
                           f"one knot), not of {len(xs)} and {len(ys)}")
            if any(b < a for a, b in itertools.pairwise(xs)):
                raise _bad(source, f"{prefix}xs", "must be in increasing order")
            if any(not 0.0 <= v <= 1.0 for v in ys) or any(b < a for a, b in itertools.pairwise(ys)):
                raise _bad(source, f"{prefix}ys", "must be non-decreasing probabilities within [0, 1]")
            return cls("isotonic", xs, ys)
        if method == "platt":
            return cls("platt", a=_number(d, "a", source, prefix), b=_number(d, "b", source, prefix))
        if method == "identity":
            return cls("identity")
        raise _bad(source, f"{prefix}method", f'must be "isotonic", "platt" or "identity", not {json_kind(method)}')


_REDO = "re-run `edgeslm calibrate ... --out FILE` (or edgeslm.calibrate(...).save(FILE)) to write a fresh report"
_REQUIRED: Any = object()


def _bad(source: str, key: str, problem: str) -> InvalidRequestError:
    return InvalidRequestError(f"{source}: {key!r} {problem}", hint=_REDO)


def _number(d: dict[str, Any], key: str, source: str, prefix: str = "", *, lo: float = -math.inf,
            hi: float = math.inf, default: Any = _REQUIRED, undefined: bool = False) -> float:
    """``d[key]`` as a finite float within [lo, hi]; with *undefined*, ``null`` / NaN are NaN."""
    if key not in d:
        if default is _REQUIRED:
            raise _bad(source, prefix + key, "is missing")
        return float(default)
    return _check_number(d[key], prefix + key, source, lo=lo, hi=hi, undefined=undefined)


def _check_number(v: Any, key: str, source: str, *, lo: float = -math.inf, hi: float = math.inf,
                  undefined: bool = False) -> float:
    if undefined and (v is None or (isinstance(v, float) and math.isnan(v))):
        return float("nan")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(source, key, f"must be a number, not {json_kind(v)}")
    try:
        f = float(v)
    except OverflowError:
        raise _bad(source, key, "is too large a number") from None
    if not math.isfinite(f):
        raise _bad(source, key, f"must be a finite number, not {f}")
    if not lo <= f <= hi:
        raise _bad(source, key, f"must be within [{lo:g}, {hi:g}], not {f:g}")
    return f


def _numbers(d: dict[str, Any], key: str, source: str, prefix: str = "") -> list[float]:
    v = d.get(key, _REQUIRED)
    if v is _REQUIRED:
        raise _bad(source, prefix + key, "is missing")
    if not isinstance(v, list):
        raise _bad(source, prefix + key, f"must be a list of numbers, not {json_kind(v)}")
    return [_check_number(x, f"{prefix}{key}[{i}]", source) for i, x in enumerate(v)]


def _integer(d: dict[str, Any], key: str, source: str, *, lo: int = 0) -> int:
    v = d.get(key, _REQUIRED)
    if v is _REQUIRED:
        raise _bad(source, key, "is missing")
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(source, key, f"must be a whole number, not {json_kind(v)}")
    if v < lo:
        raise _bad(source, key, f"must be {lo} or more, not {v}")
    return v


def _text(d: dict[str, Any], key: str, source: str, *, default: Any = _REQUIRED) -> str:
    v = d.get(key, _REQUIRED)
    if v is _REQUIRED:
        if default is _REQUIRED:
            raise _bad(source, key, "is missing")
        return str(default)
    if not isinstance(v, str) or (default is _REQUIRED and not v):
        raise _bad(source, key, f"must be a {'non-empty ' if default is _REQUIRED else ''}string, not {json_kind(v)}")
    return v


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


REPORT_VERSION = 1
_RATES = ("auroc", "ece", "ece_raw", "local_accuracy", "share_escalated", "errors_caught", "accuracy_if_cloud_right")


@dataclass
class CalibrationReport:
    """What :func:`edgeslm.calibrate` measured, and the fitted calibrator and threshold.

    A request escalates when its raw ``score`` is below ``threshold``; ``threshold_confidence``
    is the same cut on the calibrated scale. The rates (``share_escalated``, ``errors_caught``,
    ``accuracy_if_cloud_right``) and ``ece`` are estimated out of fold (each example judged by a
    calibrator and threshold fitted without it), so they are honest for data like the sample.
    ``auroc`` and ``ece_raw`` describe the raw score on the answers that validated.
    """

    score: str
    method: str
    budget: float
    threshold: float
    threshold_confidence: float
    calibrator: Calibrator
    n: int
    n_invalid: int
    auroc: float
    ece: float
    ece_raw: float
    ece_bins: int
    local_accuracy: float
    share_escalated: float
    errors_caught: float
    accuracy_if_cloud_right: float
    candidates: dict[str, float] = field(default_factory=dict)
    model: str = ""
    schema_sha256: str = ""
    created: str = ""
    warnings: list[str] = field(default_factory=list)
    version: int = REPORT_VERSION

    def confidence(self, score: float) -> float:
        """The calibrated probability for a raw score."""
        return self.calibrator(score)

    def escalates(self, score: float) -> bool:
        """Whether a raw score falls below the threshold."""
        return score < self.threshold

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["calibrator"] = self.calibrator.to_dict()
        return _jsonable(d)

    @classmethod
    def from_dict(cls, d: Any, *, source: str | None = None) -> CalibrationReport:
        """The report :meth:`to_dict` wrote. Every field is checked (type, finite, range);
        :class:`InvalidRequestError` names the first wrong one (*source*: the file it was read from)."""
        it = f"{source} is" if source else "this is"
        if not isinstance(d, dict):
            raise InvalidRequestError(f"{it} not a calibration report: it holds {json_kind(d)}, not a JSON object",
                                      hint=_REDO)
        if d.get("version") != REPORT_VERSION:
            raise InvalidRequestError(f"{it} not a calibration report of this edgeslm version (its version: "
                                      f"{json_kind(d['version']) if 'version' in d else 'none'}; this edgeslm reads "
                                      f"{REPORT_VERSION})", hint=_REDO)
        where = f"calibration report {source}" if source else "calibration report"
        n = _integer(d, "n", where, lo=1)
        n_invalid = _integer(d, "n_invalid", where)
        if n_invalid > n:
            raise _bad(where, "n_invalid", f"must be at most n ({n}), not {n_invalid}")
        candidates = d.get("candidates", {})
        if not isinstance(candidates, dict):
            raise _bad(where, "candidates", f"must be an object of score names to AUROCs, not {json_kind(candidates)}")
        warnings = d.get("warnings", [])
        if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
            raise _bad(where, "warnings", f"must be a list of strings, not {json_kind(warnings)}")
        method = _text(d, "method", where)
        if method not in ("isotonic", "platt", "identity"):
            raise _bad(where, "method", f'must be "isotonic", "platt" or "identity", not {json_kind(method)}')
        if "calibrator" not in d:
            raise _bad(where, "calibrator", "is missing")
        calibrator = Calibrator.from_dict(d["calibrator"], source=where, prefix="calibrator.")
        rates = {k: _number(d, k, where, lo=0.0, hi=1.0, default=math.nan, undefined=True) for k in _RATES}
        return cls(
            score=_text(d, "score", where),
            method=method,
            budget=_number(d, "budget", where, lo=0.0, hi=1.0),
            threshold=_number(d, "threshold", where),
            threshold_confidence=_number(d, "threshold_confidence", where, lo=0.0, hi=1.0),
            calibrator=calibrator,
            n=n,
            n_invalid=n_invalid,
            ece_bins=_integer(d, "ece_bins", where, lo=1),
            candidates={str(k): _check_number(v, f"candidates.{k}", where, lo=0.0, hi=1.0, undefined=True)
                        for k, v in candidates.items()},
            model=_text(d, "model", where, default=""),
            schema_sha256=_text(d, "schema_sha256", where, default=""),
            created=_text(d, "created", where, default=""),
            warnings=list(warnings),
            **rates,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON (NaN written as ``null``)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationReport:
        """Read a report written by :meth:`save`; :class:`InvalidRequestError` naming the file (and the
        field) when it cannot be read or is not a valid report."""
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidRequestError(f"a calibration report path must be a str or a path, not {type(path).__name__}",
                                      hint="pass the file that edgeslm.calibrate(...).save(path) wrote")
        name = os.fspath(path)
        if os.path.isdir(name):
            raise InvalidRequestError(f"{name} is a folder, not a calibration report",
                                      hint="pass the JSON file that edgeslm.calibrate(...).save(path) wrote")
        try:
            with open(name, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise InvalidRequestError(f"no calibration report at {name}",
                                      hint="run edgeslm.calibrate(...).save(path) (or `edgeslm calibrate --out "
                                      "FILE`) first") from None
        except OSError as exc:
            raise InvalidRequestError(f"cannot read the calibration report {name}: {exc.strerror or exc}",
                                      hint="pass the JSON file that edgeslm.calibrate(...).save(path) wrote") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(f"{name} is not a calibration report: not UTF-8 text (byte {exc.start})",
                                      hint=_REDO) from None
        if not text.strip():
            raise InvalidRequestError(f"{name} is not a calibration report: the file is empty", hint=_REDO)
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise InvalidRequestError(f"{name} is not JSON: {exc}", hint=_REDO) from None
        except RecursionError:
            raise InvalidRequestError(f"{name} is not a calibration report: its JSON is nested too deeply",
                                      hint=_REDO) from None
        return cls.from_dict(d, source=name)

    def rows(self) -> list[tuple[str, str]]:
        """``(name, value)`` pairs for a table."""

        def pct(v: float) -> str:
            return "n/a" if not math.isfinite(v) else f"{v * 100:.1f} %"

        def num(v: float) -> str:
            return "n/a" if not math.isfinite(v) else f"{v:.3f}"

        return [
            ("examples (invalid locally)", f"{self.n} ({self.n_invalid})"),
            (f"AUROC of '{self.score}'", num(self.auroc)),
            (f"ECE, {self.method} calibrated ({self.ece_bins} equal-mass bins)", num(self.ece)),
            ("ECE, raw score", num(self.ece_raw)),
            ("local accuracy", pct(self.local_accuracy)),
            (f"share escalated (budget {self.budget * 100:g} %)", pct(self.share_escalated)),
            ("local errors caught", pct(self.errors_caught)),
            ("accuracy if the cloud is right (upper bound)", pct(self.accuracy_if_cloud_right)),
            ("threshold: raw score / calibrated", f"{self.threshold:.4f} / {self.threshold_confidence:.4f}"),
        ]


AUTO_ISOTONIC_MIN = 100


def _ece_bins(n: int) -> int:
    """Bins for a sample of *n*: about sqrt(n), between 1 and 10."""
    return max(1, min(10, round(math.sqrt(n))))


def _allowed(budget: float, n_total: int, n_invalid: int) -> int:
    """How many valid answers may escalate on low confidence: invalid ones escalate anyway."""
    return max(0, math.floor(budget * n_total + 1e-9) - n_invalid)


def build_report(
    candidates: dict[str, ArrayLike],
    correct: ArrayLike,
    valid: ArrayLike,
    *,
    budget: float,
    method: str = "auto",
    folds: int = 5,
    seed: int = 0,
) -> CalibrationReport:
    """Pick a score, calibrate it and place the budget's threshold, from labeled outcomes.

    ``candidates`` maps a score name to one score per example (ignored where ``valid`` is false);
    ``correct`` says whether the local answer was right (all fields), ``valid`` whether there
    was a local answer at all (an invalid one always escalates under ``on_invalid``, so it uses up
    budget first). ``method``: ``"isotonic"``, ``"platt"``, or ``"auto"`` (isotonic from
    ``AUTO_ISOTONIC_MIN`` valid answers on, Platt's two parameters below that, where isotonic
    steps overfit). The candidate with the highest AUROC wins (the first one on ties or when AUROC
    is undefined). Rates and ``ece`` are out of fold: ``folds`` seeded folds, each judged by a
    calibrator and threshold fitted on the others. The returned calibrator and threshold are
    fitted on everything.
    """
    if not candidates:
        raise InvalidRequestError("no candidate scores", hint='pass at least {"confidence": [...]}')
    if not 0.0 <= budget <= 1.0:
        raise InvalidRequestError(f"budget must be within [0, 1], not {budget}", hint="e.g. budget=0.05 for 5 %")
    y = np.asarray(correct, dtype=bool).ravel()
    ok = np.asarray(valid, dtype=bool).ravel()
    n = y.size
    if ok.size != n or n == 0:
        raise InvalidRequestError("correct and valid need one entry per example", hint="pass labeled examples")
    if np.any(y & ~ok):
        raise InvalidRequestError("an example without a valid answer cannot be correct", hint="check the labels")
    scores = {k: np.asarray(v, dtype=float).ravel() for k, v in candidates.items()}
    for k, v in scores.items():
        if v.size != n:
            raise InvalidRequestError(f"score {k!r} has {v.size} values for {n} examples", hint="one per example")
        if not np.all(np.isfinite(v[ok])):
            raise InvalidRequestError(f"score {k!r} is not finite on every valid answer", hint="fix the score")
    warnings: list[str] = []
    n_valid = int(ok.sum())
    if method == "auto":
        method = "isotonic" if n_valid >= AUTO_ISOTONIC_MIN else "platt"
    if method not in ("isotonic", "platt"):
        raise InvalidRequestError(f"unknown calibration method {method!r}", hint='use "auto", "isotonic" or "platt"')
    ranked = {k: (auroc(v[ok], y[ok]) if n_valid else float("nan")) for k, v in scores.items()}
    best = max(scores, key=lambda k: (ranked[k] if math.isfinite(ranked[k]) else -1.0))
    s = scores[best]
    if n_valid == 0:
        raise InvalidRequestError("no example produced a valid local answer", hint="check the model and schema")
    if not math.isfinite(ranked[best]):
        warnings.append("every valid local answer was " + ("right" if y[ok].all() else "wrong")
                        + ": AUROC is undefined and the calibrator is constant")
    if n < 50:
        warnings.append(f"only {n} examples: the figures are rough; use a few hundred")

    # Out of fold: each example judged by a calibrator and threshold fitted without it.
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    k = max(2, min(folds, n))
    fold_of = np.empty(n, dtype=int)
    fold_of[order] = np.arange(n) % k
    oof_conf = np.full(n, np.nan)
    escalated = ~ok
    for f in range(k):
        test = fold_of == f
        train = ~test
        tr_ok = train & ok
        if not tr_ok.any():
            cal = Calibrator("identity")
            thr = -math.inf
        else:
            cal = Calibrator.fit(s[tr_ok], y[tr_ok], method)
            thr = threshold_for_count(s[tr_ok], _allowed(budget, int(train.sum()), int((train & ~ok).sum())))
        te_ok = test & ok
        oof_conf[te_ok] = cal.apply(s[te_ok])
        escalated = escalated | (te_ok & (s < thr))

    calibrator = Calibrator.fit(s[ok], y[ok], method)
    threshold = threshold_for_count(s[ok], _allowed(budget, n, n - n_valid))
    if n - n_valid > math.floor(budget * n + 1e-9):
        warnings.append(f"{n - n_valid} of {n} local answers were invalid: that alone exceeds the budget")
    bins = _ece_bins(n_valid)
    wrong = ~y
    return CalibrationReport(
        score=best,
        method=method,
        budget=float(budget),
        threshold=threshold,
        threshold_confidence=calibrator(threshold),
        calibrator=calibrator,
        n=n,
        n_invalid=n - n_valid,
        auroc=ranked[best],
        ece=ece(oof_conf[ok], y[ok], bins),
        ece_raw=ece(np.clip(s[ok], 0.0, 1.0), y[ok], bins),
        ece_bins=bins,
        local_accuracy=float(y.mean()),
        share_escalated=float(escalated.mean()),
        errors_caught=float((escalated & wrong).sum() / wrong.sum()) if wrong.any() else float("nan"),
        accuracy_if_cloud_right=float((y | escalated).mean()),
        candidates=ranked,
        warnings=warnings,
    )
