"""Confidence scores of one constrained JSON generation, overall and per field.

Each token the model chose freely (not forced by the grammar) has a probability under the
grammar-masked distribution and a *margin* (the top token's probability minus the second's). From
them come several candidate scores for "is this answer right" (see :func:`candidate_scores`);
``edgeslm.calibrate`` measures which one tells right from wrong best on labeled data and
calibrates it. Forced tokens carry no information and are left out everywhere.

Per field: every scalar value in the output (a JSON pointer such as ``/customer/email``) gets the
lowest probability among the free tokens that wrote it (1.0 when the grammar forced all of it): a
field is as sure as its least sure token.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CANDIDATES", "DEFAULT_CONFIDENCE", "STEERED_CAP", "TokenScore", "candidate_scores", "field_scores",
           "grounded_fields", "leaf_spans"]

#: The candidate scores :func:`candidate_scores` returns, in the order calibration prefers on ties.
CANDIDATES = ("mean_prob", "min_prob", "q10_prob", "mean_margin", "min_margin", "min_field", "joint_prob",
              "min_mean_prob", "grounded_prob")

#: The candidate ``Extraction.confidence`` is (before calibration). Chosen by measurement, not by
#: taste: ``python -m edgeslm.bench --only confidence`` (:mod:`edgeslm.bench.confidence`) runs both
#: bundled models on extraction tasks built from outside corpora (BFCL simple_python and multiple
#: questions with their accepted answers, JSONSchemaBench instances; 80 items each) and picks the
#: candidate with the best mean AUROC for "right" on one half of the items, judged on the other.
#: Measured 2026-12-08 (smollm2-135m and gemma-3-270m, greedy, max_tokens=512, steered outputs
#: capped), mean AUROC on the selection half: grounded_prob 0.903, mean_prob 0.834, min_mean_prob
#: 0.827, min_prob 0.795, mean_margin 0.793, joint_prob 0.791, q10_prob 0.783, min_field 0.774,
#: min_margin 0.682. grounded_prob on the held-out half: 0.864 (smollm2-135m 0.917, gemma-3-270m
#: 0.812; mean_prob 0.838 and 0.718). It also holds on benchmarks/labeled (40 items a task, AUROC
#: mean_prob -> grounded_prob: smollm2-135m contacts 0.78 -> 0.88, events 0.89 -> 0.97, invoices
#: 0.85 -> 0.93; gemma-3-270m 0.90 -> 0.96, 0.65 -> 0.98, 0.96 -> 0.98), and its raw value is a
#: far better probability (ECE on BFCL simple 0.43 -> 0.11 and 0.46 -> 0.15).
DEFAULT_CONFIDENCE = "grounded_prob"

#: Every score of an output the model did not finish by itself (steered to close a runaway value or
#: JSON, :class:`~edgeslm.decoding.constrain.JsonWrapUp`) is at most this: such outputs are nearly
#: always wrong, whatever their token probabilities say.
STEERED_CAP = 0.5


@dataclass(frozen=True)
class TokenScore:
    """One generated token: where its bytes lie in the output, and how sure the model was."""

    start: int
    end: int
    logprob: float | None  # None: forced by the grammar (or chosen while steered to close)
    margin: float | None = None


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return 1.0
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def candidate_scores(
    tokens: Sequence[TokenScore], fields: dict[str, float] | None = None, *, steered: bool = False,
    grounded: dict[str, bool] | None = None,
) -> dict[str, float]:
    """The candidate confidence scores of one output (each in [0, 1], higher = surer):

    ``mean_prob`` the geometric mean of the free tokens' probabilities (edgeslm's confidence before
    calibration, :data:`DEFAULT_CONFIDENCE`); ``min_prob`` the lowest; ``q10_prob`` their 10th
    percentile; ``mean_margin`` and ``min_margin`` the mean and lowest top-1 minus top-2 margin;
    ``min_field`` the lowest per-field score (*fields*, see :func:`field_scores`); ``joint_prob``
    the product of the free tokens' probabilities (the model's probability of all its free choices
    together: it falls with each unsure choice, where ``mean_prob`` averages one unsure value away
    among many sure ones); ``min_mean_prob`` the geometric mean of ``min_prob`` and ``mean_prob``
    (the weakest choice, tempered by how sure the rest are); ``grounded_prob`` ``mean_prob`` times
    the score of each field the source text does not contain (*grounded*, see
    :func:`grounded_fields`; ``mean_prob`` without a source): a value copied from the text is
    backed by it, one the model wrote itself only by the model's own certainty, which a mean of
    many sure tokens would hide.

    ``steered``: the output was steered to close (the model did not finish it by itself); every
    score is then at most :data:`STEERED_CAP`, so whichever one calibration picks carries that."""
    lps = [t.logprob for t in tokens if t.logprob is not None]
    probs = [math.exp(lp) for lp in lps]
    margins = [t.margin for t in tokens if t.logprob is not None and t.margin is not None]
    mean_prob = math.exp(sum(lps) / len(lps)) if lps else 1.0
    min_prob = min(probs, default=1.0)
    out = {
        "mean_prob": mean_prob,
        "min_prob": min_prob,
        "q10_prob": _quantile(probs, 0.1),
        "mean_margin": sum(margins) / len(margins) if margins else 1.0,
        "min_margin": min(margins, default=1.0),
        "min_field": min(fields.values(), default=1.0) if fields else 1.0,
        "joint_prob": math.exp(sum(lps)),
        "min_mean_prob": math.sqrt(min_prob * mean_prob),
        "grounded_prob": mean_prob * math.prod((fields or {}).get(p, 1.0) for p, ok in (grounded or {}).items()
                                               if not ok),
    }
    if steered:
        out = {k: min(v, STEERED_CAP) for k, v in out.items()}
    return out


def field_scores(tokens: Sequence[TokenScore], output: bytes) -> dict[str, float]:
    """JSON pointer -> the lowest free-token probability within that scalar value's bytes."""
    spans = leaf_spans(output)
    out: dict[str, float] = {}
    for pointer, (a, b) in spans.items():
        probs = [math.exp(t.logprob) for t in tokens if t.logprob is not None and t.start < b and t.end > a]
        out[pointer] = min(probs, default=1.0)
    return out


_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def grounded_fields(output: bytes, source: str, fields: dict[str, float]) -> dict[str, bool]:
    """JSON pointer -> whether that value of *output* is in *source*: a string anywhere in it
    (without regard to case and spacing), a number among the numbers it writes (``1,250.5`` is
    1250.5). Only values the model chose count (a field of *fields*, :func:`field_scores`, below
    1.0: not forced whole by the grammar); ``true``, ``false`` and ``null`` never do. A value can be
    right without being in the text (a date normalised, a category): the score that uses this
    (``grounded_prob``) weighs such a value by the model's own certainty, it does not reject it."""
    text, numbers = _fold(source), None
    out: dict[str, bool] = {}
    for pointer, (a, b) in leaf_spans(output).items():
        if fields.get(pointer, 1.0) >= 1.0:
            continue
        try:
            value = json.loads(output[a:b].decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(value, str):
            folded = _fold(value)
            if folded:
                out[pointer] = folded in text
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if numbers is None:
                numbers = {float(m.replace(",", "")) for m in _NUMBER.findall(source)}
            try:
                out[pointer] = float(value) in numbers
            except OverflowError:  # an integer past float's range cannot be compared: counted as not found
                out[pointer] = False
    return out


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def leaf_spans(data: bytes) -> dict[str, tuple[int, int]]:
    """Byte spans of every scalar value of a JSON text, by JSON pointer (``{}`` if it is not JSON).

    A string's span covers its quotes. Duplicate keys keep the last value, as JSON parsers do."""
    out: dict[str, tuple[int, int]] = {}
    n = len(data)

    def ws(i: int) -> int:
        while i < n and data[i] in b" \t\r\n":
            i += 1
        return i

    def string(i: int) -> tuple[str, int]:
        j = i + 1
        while j < n:
            c = data[j]
            if c == 0x5C:
                j += 2
                continue
            if c == 0x22:
                return json.loads(data[i : j + 1].decode("utf-8", "replace")), j + 1
            j += 1
        raise ValueError("unterminated string")

    def value(i: int, ptr: str, depth: int) -> int:
        if depth > 128:
            raise ValueError("too deep")
        i = ws(i)
        if i >= n:
            raise ValueError("end of input")
        c = data[i]
        if c == 0x7B:  # {
            i = ws(i + 1)
            if i < n and data[i] == 0x7D:
                return i + 1
            while True:
                i = ws(i)
                if i >= n or data[i] != 0x22:
                    raise ValueError("key expected")
                key, i = string(i)
                i = ws(i)
                if i >= n or data[i] != 0x3A:
                    raise ValueError(": expected")
                i = value(i + 1, f"{ptr}/{_escape(key)}", depth + 1)
                i = ws(i)
                if i < n and data[i] == 0x2C:
                    i += 1
                    continue
                if i < n and data[i] == 0x7D:
                    return i + 1
                raise ValueError(", or } expected")
        if c == 0x5B:  # [
            i = ws(i + 1)
            if i < n and data[i] == 0x5D:
                return i + 1
            k = 0
            while True:
                i = value(i, f"{ptr}/{k}", depth + 1)
                k += 1
                i = ws(i)
                if i < n and data[i] == 0x2C:
                    i += 1
                    continue
                if i < n and data[i] == 0x5D:
                    return i + 1
                raise ValueError(", or ] expected")
        if c == 0x22:
            _, j = string(i)
        else:
            j = i
            while j < n and data[j] not in b",]} \t\r\n":
                j += 1
            if j == i:
                raise ValueError("value expected")
        out[ptr] = (i, j)
        return j

    try:
        end = value(0, "", 0)
    except (ValueError, IndexError):
        return {}
    return out if ws(end) == n else {}
