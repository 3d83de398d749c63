"""``edgeslm.calibrate``: measure how far a model's confidence can be trusted on labeled data, and
fit the calibrator and the threshold that keep escalations within a budget.

Only the public ``model.extract`` is used. Candidate scores are functions of the
:class:`~edgeslm.Extraction` (``DEFAULT_SCORES``: today's ``confidence``); pass ``scores=`` to
compare more, and the one with the best AUROC for "all fields right" is calibrated.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._errors import ExtractionFailed, InvalidRequestError
from ..decoding.scores import CANDIDATES
from ..escalation.calibration import CalibrationReport, build_report

__all__ = ["DEFAULT_SCORES", "calibrate", "fields_match"]

ScoreFn = Callable[[Any], float]

def _score(name: str) -> ScoreFn:
    return lambda x: float(x.scores.get(name, x.confidence))


DEFAULT_SCORES: dict[str, ScoreFn] = {
    # Extraction.confidence before calibration (grounded_prob: the geometric mean of the free
    # tokens' probabilities, times the score of each value not in the text; capped at 0.5 when the
    # output was steered to close), then each raw candidate of
    # edgeslm.decoding.scores: the one with the best AUROC on the labeled data is calibrated
    "confidence": lambda x: float(x.confidence),
    **{name: _score(name) for name in CANDIDATES},
}


def _norm(v: Any) -> Any:
    if hasattr(v, "model_dump"):
        v = v.model_dump(mode="json")
    if hasattr(v, "value") and not isinstance(v, (str, int, float, bool)):  # an Enum member
        v = v.value
    return v


def fields_match(data: Any, expected: Any) -> bool:
    """Whether *data* equals *expected*, field by field: strings compared case- and
    whitespace-insensitively, numbers to 1e-6, a missing key the same as ``null``."""
    data, expected = _norm(data), _norm(expected)
    if isinstance(expected, dict):
        if not isinstance(data, dict):
            return False
        return all(fields_match(data.get(k), expected.get(k)) for k in set(data) | set(expected))
    if isinstance(expected, list):
        return isinstance(data, list) and len(data) == len(expected) and all(
            fields_match(a, b) for a, b in zip(data, expected, strict=True))
    if isinstance(expected, bool) or isinstance(data, bool):
        return data is expected
    if isinstance(expected, (int, float)):
        return isinstance(data, (int, float)) and math.isclose(data, expected, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(expected, str):
        return isinstance(data, str) and " ".join(data.split()).casefold() == " ".join(expected.split()).casefold()
    return data == expected


def _pairs(examples: Iterable[Any]) -> list[tuple[str, Any]]:
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, Mapping) and "text" in ex and "expected" in ex:
            out.append((ex["text"], ex["expected"]))
        elif isinstance(ex, (tuple, list)) and len(ex) == 2:
            out.append((ex[0], ex[1]))
        else:
            raise InvalidRequestError(f"examples[{i}] is not a labeled example",
                                      hint='pass {"text": ..., "expected": {...}} dicts or (text, expected) pairs')
        if not isinstance(out[-1][0], str) or not out[-1][0]:
            raise InvalidRequestError(f"examples[{i}] has no text", hint="each example needs the input text")
    return out


def calibrate(
    model: Any,
    examples: Iterable[Any],
    *,
    schema: Any,
    budget: float = 0.05,
    method: str = "auto",
    scores: Mapping[str, ScoreFn] | None = None,
    compare: Callable[[Any, Any], bool] = fields_match,
    instructions: str | None = None,
    few_shot: Any = None,
    max_tokens: int | None = None,
    folds: int = 5,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationReport:
    """Run *model* on labeled *examples* and fit what an :class:`edgeslm.Escalation` needs.

    Each example is ``{"text", "expected"}`` (or a pair); the local answer is right when
    ``compare(data, expected)`` (default :func:`fields_match`). Greedy decoding, as in production.
    ``budget`` is the most traffic to send to the cloud (answers with no valid local result count
    first). ``method``: ``"auto"`` (isotonic from 100 valid answers on, else Platt), ``"isotonic"``
    or ``"platt"``. Returns a :class:`CalibrationReport`; ``Escalation(target, min_confidence=report)``
    uses it, and ``report.save(path)`` / ``CalibrationReport.load(path)`` keep it.
    """
    from ..decoding.normalize import normalize_schema

    if method not in ("auto", "isotonic", "platt"):
        raise InvalidRequestError(f"unknown calibration method {method!r}", hint='use "auto", "isotonic" or "platt"')
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 <= budget <= 1.0:
        raise InvalidRequestError(f"budget must be a share in [0, 1], not {budget!r}", hint="e.g. budget=0.05")
    pairs = _pairs(examples)
    if len(pairs) < 2:
        raise InvalidRequestError("calibrate needs at least 2 labeled examples", hint="a few hundred is better")
    fns = dict(scores or DEFAULT_SCORES)
    if not fns:
        raise InvalidRequestError("scores= is empty", hint="leave it out to use confidence")
    values: dict[str, list[float]] = {k: [] for k in fns}
    correct: list[bool] = []
    valid: list[bool] = []
    for i, (text, expected) in enumerate(pairs):
        try:
            x = model.extract(text, schema, instructions=instructions, examples=few_shot, max_tokens=max_tokens,
                              temperature=0.0)
        except ExtractionFailed:
            x = None
        valid.append(x is not None)
        correct.append(x is not None and bool(compare(x.data, expected)))
        for k, fn in fns.items():
            values[k].append(float(fn(x)) if x is not None else float("nan"))
        if progress is not None:
            progress(i + 1, len(pairs))
    report = build_report(values, correct, valid, budget=float(budget), method=method, folds=folds, seed=seed)
    plain = normalize_schema(schema)
    report.model = str(getattr(model, "name", "") or "")
    report.schema_sha256 = hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()
    report.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return report
