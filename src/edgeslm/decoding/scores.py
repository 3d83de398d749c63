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
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CANDIDATES", "DEFAULT_CONFIDENCE", "STEERED_CAP", "TokenScore", "candidate_scores", "field_scores",
           "leaf_spans"]

#: The candidate scores :func:`candidate_scores` returns, in the order calibration prefers on ties.
CANDIDATES = ("mean_prob", "min_prob", "q10_prob", "mean_margin", "min_margin", "min_field", "joint_prob",
              "min_mean_prob")

#: The candidate ``Extraction.confidence`` is (before calibration). Chosen by measurement, not by
#: taste: ``python -m edgeslm.bench --only confidence`` (:mod:`edgeslm.bench.confidence`) runs both
#: bundled models on extraction tasks built from outside corpora (BFCL simple_python and multiple
#: questions with their accepted answers, JSONSchemaBench instances; 80 items each) and picks the
#: candidate with the best mean AUROC for "right" on one half of the items, judged on the other.
#: Measured (smollm2-135m and gemma-3-270m, greedy, max_tokens=512, steered outputs capped), mean
#: AUROC on the selection half: mean_prob 0.811, min_mean_prob 0.806, min_prob 0.777, mean_margin
#: 0.773, joint_prob 0.767, q10_prob 0.741, min_field 0.736, min_margin 0.696. mean_prob on the
#: held-out half: 0.78 (smollm2-135m 0.83, gemma-3-270m 0.72). It also holds on benchmarks/labeled
#: (a trial on 40 items a model: 0.86 gemma-3-270m, 0.76 smollm2-135m), where min_prob falls to 0.36
#: and 0.63, joint_prob to 0.52 and 0.65, min_mean_prob to 0.40 and 0.70.
DEFAULT_CONFIDENCE = "mean_prob"

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
    tokens: Sequence[TokenScore], fields: dict[str, float] | None = None, *, steered: bool = False
) -> dict[str, float]:
    """The candidate confidence scores of one output (each in [0, 1], higher = surer):

    ``mean_prob`` the geometric mean of the free tokens' probabilities (edgeslm's confidence before
    calibration, :data:`DEFAULT_CONFIDENCE`); ``min_prob`` the lowest; ``q10_prob`` their 10th
    percentile; ``mean_margin`` and ``min_margin`` the mean and lowest top-1 minus top-2 margin;
    ``min_field`` the lowest per-field score (*fields*, see :func:`field_scores`); ``joint_prob``
    the product of the free tokens' probabilities (the model's probability of all its free choices
    together: it falls with each unsure choice, where ``mean_prob`` averages one unsure value away
    among many sure ones); ``min_mean_prob`` the geometric mean of ``min_prob`` and ``mean_prob``
    (the weakest choice, tempered by how sure the rest are).

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
