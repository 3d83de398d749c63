"""Confidence on outside data (``python -m edgeslm.bench --only confidence``): the datasets built from
the conformance corpora, their correctness oracles, and the structure of the section's figures.
The AUROC figures themselves belong to the bench (benchmarks/RESULTS.md), not to a threshold here."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from edgeslm.bench.confidence import (
    DATASETS,
    SCORES,
    SPLITS,
    bfcl_items,
    bfcl_parallel_items,
    choose,
    confidence_bench,
    jsonschemabench_items,
    render,
    summarize,
)
from edgeslm.decoding.scores import (
    CANDIDATES,
    DEFAULT_CONFIDENCE,
    STEERED_CAP,
    TokenScore,
    candidate_scores,
    grounded_fields,
)
from edgeslm.decoding.support import check_schema

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
BFCL = CONFORMANCE / "bfcl"
JSB = CONFORMANCE / "jsonschemabench" / "schemas.jsonl"
requires_corpora = pytest.mark.skipif(
    not (BFCL.is_dir() and JSB.is_file()),
    reason=f"conformance corpora (BFCL, JSONSchemaBench) not found in {CONFORMANCE} (they live beside the repository)",
)


def test_the_default_confidence_is_the_documented_choice() -> None:
    # chosen by `python -m edgeslm.bench --only confidence` (see DEFAULT_CONFIDENCE's comment)
    assert DEFAULT_CONFIDENCE == "grounded_prob"
    assert DEFAULT_CONFIDENCE in CANDIDATES


def test_new_candidates_and_the_steered_cap() -> None:
    toks = [TokenScore(0, 1, math.log(0.9), 0.8), TokenScore(1, 2, None), TokenScore(2, 3, math.log(0.4), 0.1)]
    s = candidate_scores(toks, {"/a": 0.4})
    assert set(s) == set(CANDIDATES)
    assert s["joint_prob"] == pytest.approx(0.36) and s["min_mean_prob"] == pytest.approx(math.sqrt(0.4 * 0.6))
    capped = candidate_scores(toks, {"/a": 0.4}, steered=True)  # the model did not finish by itself
    assert all(capped[k] == min(s[k], STEERED_CAP) for k in CANDIDATES) and capped["mean_prob"] == STEERED_CAP
    assert candidate_scores([]) == dict.fromkeys(CANDIDATES, 1.0)  # nothing free: nothing to doubt


def test_grounded_fields_look_values_up_in_the_source() -> None:
    out = (b'{"name": "Ada  LOVELACE", "age": 22, "city": "Napa", "owed": 1250.5, "year": 2026, "day": 30,'
           b' "ok": true, "kind": "person", "none": null, "note": ""}')
    fields = {"/name": 0.9, "/age": 0.5, "/city": 0.8, "/owed": 0.7, "/year": 0.6, "/day": 0.95, "/ok": 0.4,
              "/kind": 1.0, "/none": 0.3, "/note": 0.99}
    src = "ada lovelace, aged 31,\nlives in\tnapa valley; owes 1,250.5 since 2026-08-30"
    g = grounded_fields(out, src, fields)
    # strings without regard to case and spacing; numbers as the text writes them ("1,250.5"; a date's
    # parts, but "-08" is not minus eight); booleans, nulls, empty strings and forced values never count
    assert g == {"/name": True, "/age": False, "/city": True, "/owed": True, "/year": True, "/day": True}
    assert grounded_fields(b'{"n": -8}', "2026-08-30", {"/n": 0.5}) == {"/n": False}
    assert grounded_fields(b'{"n": -8}', "a drop of -8 degrees", {"/n": 0.5}) == {"/n": True}
    assert grounded_fields(b"not json", src, {}) == {}
    huge = b'{"n": ' + b"9" * 400 + b"}"  # an integer past float's range: a value, not a crash
    assert grounded_fields(huge, "9" * 400, {"/n": 0.5}) == {"/n": False}
    toks = [TokenScore(0, 1, math.log(0.9), 0.8), TokenScore(2, 3, math.log(0.4), 0.1)]
    s = candidate_scores(toks, fields, grounded=g)
    # mean_prob, times the score of each value not in the text (only /age here)
    assert s["grounded_prob"] == pytest.approx(s["mean_prob"] * 0.5)
    assert candidate_scores(toks, fields)["grounded_prob"] == s["mean_prob"]  # no source: mean_prob
    assert candidate_scores(toks, fields, grounded=g, steered=True)["grounded_prob"] <= STEERED_CAP


def test_render_is_lines_not_json() -> None:
    lines = render({"firstName": "Ada", "home_address": {"city": "Paris"}, "tags": ["a", "b"], "active": True,
                    "n": 2.5})
    assert lines == ["first name: Ada", "home address / city: Paris", "tags 1: a", "tags 2: b", "active: yes",
                     "n: 2.5"]


def _perturb(v):
    """A value no normalisation makes equal to *v*."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1000
    if isinstance(v, str):
        return v + " zzz wrong"
    if isinstance(v, list):
        return [*v, v[0]] if v else ["zzz"]
    return {"zzz": 1}


@requires_corpora
@pytest.mark.parametrize("category", ["simple_python", "multiple"])
def test_bfcl_oracle(category: str) -> None:
    items = bfcl_items(6, root=BFCL, category=category)
    assert len(items) == 6 and len({it.id for it in items}) == 6
    assert all(it.id.startswith(category) for it in items)
    for it in items:
        assert it.text.strip() and check_schema(it.schema).level != "refused"
        assert it.right(it.gold), (it.id, it.gold)
        assert not it.right(None) and not it.right("text")
        wrong = dict(it.gold, zzz_unknown_parameter=1)  # BFCL: no unknown parameters
        assert not it.right(wrong)
        required = it.schema.get("required") or []
        if required and required[0] in it.gold:
            missing = {k: v for k, v in it.gold.items() if k != required[0]}
            assert not it.right(missing), it.id
            changed = dict(it.gold, **{required[0]: _perturb(it.gold[required[0]])})
            assert not it.right(changed), (it.id, changed)
    # BFCL compares strings without case, spaces and punctuation
    it = next(i for i in items if any(isinstance(v, str) and v for v in i.gold.values()))
    k = next(k for k, v in it.gold.items() if isinstance(v, str) and v)
    assert it.right(dict(it.gold, **{k: it.gold[k].upper() + " "}))


@requires_corpora
def test_bfcl_parallel_oracle_takes_any_order() -> None:
    items = bfcl_parallel_items(4, root=BFCL)
    assert len(items) == 4
    for it in items:
        calls = it.gold["calls"]
        assert len(calls) >= 2 and it.right(it.gold)
        assert it.right({"calls": list(reversed(calls))})  # any order
        assert not it.right({"calls": calls[:-1]})  # a call missing
        assert not it.right({"calls": [*calls, calls[0]]})  # one too many
        if calls[0] != calls[1]:
            assert not it.right({"calls": [calls[0]] * len(calls)})  # one call twice, another missing
        assert not it.right(calls)  # not the schema's shape


@requires_corpora
def test_jsonschemabench_oracle_and_text() -> None:
    items = jsonschemabench_items(6, JSB)
    assert len(items) == 6
    for it in items:
        assert check_schema(it.schema).exact
        assert it.right(it.gold) and it.right(json.loads(json.dumps(it.gold)))
        assert json.dumps(it.gold) not in it.text and it.text.count("\n") >= 1  # lines, not the JSON itself
        wrong = copy.deepcopy(it.gold)
        k = next(iter(wrong))
        wrong[k] = _perturb(wrong[k])
        assert not it.right(wrong), (it.id, wrong)
        extra = dict(it.gold, zzz_extra_field="x")
        assert not it.right(extra)
    # numbers are compared as numbers, strings without regard to case
    it = next((i for i in items if any(isinstance(v, int) and not isinstance(v, bool) for v in i.gold.values())), None)
    if it is not None:
        k = next(k for k, v in it.gold.items() if isinstance(v, int) and not isinstance(v, bool))
        assert it.right(dict(it.gold, **{k: float(it.gold[k])}))


def _rows(dataset: str, n: int, good: str) -> list[dict]:
    """*n* made-up valid rows, half right, split in halves; *good* separates right from wrong."""
    return [{"dataset": dataset, "id": f"{dataset}{i}", "split": "select" if i < n // 2 else "heldout",
             "valid": True, "right": i % 2 == 0, "skipped": None,
             "scores": {k: (0.9 if i % 2 == 0 else 0.1) if k == good else 0.5 for k in SCORES}} for i in range(n)]


def test_summary_and_choice_on_made_up_rows() -> None:
    rows = _rows("d", 24, "min_prob") + _rows("tiny", 4, "q10_prob")
    rows.append({"dataset": "d", "id": "x", "split": "heldout", "valid": False, "right": False, "skipped": None,
                 "scores": {}})
    s = summarize(rows)
    assert s["d"]["all"]["items"] == 25 and s["d"]["all"]["valid"] == 24 and s["d"]["all"]["right"] == 12
    assert s["d"]["all"]["auroc"]["min_prob"] == 1.0 and s["d"]["all"]["auroc"]["mean_prob"] == 0.5
    assert s["d"]["select"]["auroc"]["min_prob"] == 1.0 and s["tiny"]["select"]["auroc"]["q10_prob"] == 1.0
    pick = choose({"m": {"datasets": s}})
    # "tiny" has 1 right and 1 wrong answer per half: shown, but too few to count in the choice
    assert pick["best"] == "min_prob" and pick["candidates"]["min_prob"]["mean_heldout"] == 1.0
    assert pick["candidates"]["q10_prob"]["mean_select"] == 0.5
    one_class = summarize([r for r in rows if r["right"]])
    assert all(v is None for v in one_class["d"]["all"]["auroc"].values())


@requires_corpora
def test_bench_section_structure(smollm2_path: Path) -> None:
    r = confidence_bench("smollm2-135m", n=2, n_threads=1, max_tokens=96)  # bounded: 6 items, <= 96 tokens
    assert r["default"] == DEFAULT_CONFIDENCE and list(r["scores"]) == list(SCORES) and r["max_tokens"] == 96
    assert set(r["datasets"]) == set(DATASETS) and len(r["rows"]) == 2 * len(DATASETS)
    for d in r["datasets"].values():
        for split in SPLITS:
            m = d[split]
            assert set(m["auroc"]) == set(SCORES) and set(m["ece"]) == set(SCORES)
            for v in m["auroc"].values():
                assert v is None or 0.0 <= v <= 1.0
            for v in m["ece"].values():
                assert v is None or 0.0 <= v <= 1.0
            assert m["accuracy"] is None or 0.0 <= m["accuracy"] <= 1.0
    for row in r["rows"]:
        if row["valid"]:
            assert set(r["scores"]) <= set(row["scores"]) and all(math.isfinite(v) for v in row["scores"].values())
            assert row["scores"]["confidence"] == row["scores"][DEFAULT_CONFIDENCE]  # extract's confidence

    from edgeslm.bench.report import Report

    rep = Report(quick=True, machine={"cpu": "x", "cpu_count": 2, "ram_total_bytes": 1 << 30, "gpus": [],
                                      "os": "Linux", "arch": "x86_64", "versions": {"edgeslm": "0"}})
    rep.sections["smollm2-135m"] = {"confidence": r}
    md = rep.markdown()
    assert "## Confidence on outside data: AUROC" in md and "## Confidence: mean AUROC" in md
    json.dumps(rep.to_json())


def test_grounded_prob_on_a_real_extraction(smollm2) -> None:
    # the README's example: whatever the model writes, grounded_prob is mean_prob times the score of
    # each value it chose that the text does not contain (checked here on the parsed data)
    text = "Maria, aged 31, moved to Lisbon."
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "city": {"type": "string"}},
              "required": ["name", "age", "city"], "additionalProperties": False}
    x = smollm2.extract(text, schema, temperature=0.0, max_tokens=48)
    absent = [f"/{k}" for k, v in x.data.items()
              if (str(v).casefold() not in text.casefold()) and x.field_confidence.get(f"/{k}", 1.0) < 1.0]
    expected = x.scores["mean_prob"] * math.prod(x.field_confidence[p] for p in absent)
    assert x.scores["grounded_prob"] == pytest.approx(expected)
    assert (x.scores["grounded_prob"] < x.scores["mean_prob"]) == bool(absent)
