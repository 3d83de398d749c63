"""BFCL sample: every call SmolLM2 emits names a provided function and validates, in every category;
and the AST checker the benchmark uses (benchmarks/bfcl.py reports accuracy, not a threshold here)."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgeslm
from edgeslm.bench.bfcl import CATEGORIES, PARALLEL, ast_match, load, messages_of, to_json_schema, tools_of
from edgeslm.decoding.schema import make_validator
from edgeslm.tools import get_format

BFCL = Path(__file__).resolve().parents[1].parent / "shared/conformance/bfcl"
requires_bfcl = pytest.mark.skipif(not BFCL.is_dir(), reason=f"BFCL conformance sample not found at {BFCL}")
PER_CATEGORY = 8  # 40 questions in all, a bounded sample; benchmarks/bfcl.py --per-category N for more


@requires_bfcl
@pytest.mark.parametrize("category", CATEGORIES)
def test_every_emitted_call_is_valid(smollm2: edgeslm.Model, category: str) -> None:
    questions = load(category, PER_CATEGORY, BFCL)
    emitted = failed = 0
    most = 0
    for i, q in enumerate(questions):
        tools = tools_of(q)
        schemas = {t["function"]["name"]: make_validator(t["function"]["parameters"]) for t in tools}
        # mostly required (a 135M model seldom calls on its own), one question in auto mode
        choice = "auto" if i == 0 else "required"
        try:
            r = smollm2.chat(messages_of(q), tools=tools, tool_choice=choice,
                             parallel_tool_calls=category in PARALLEL, temperature=0, seed=0, max_tokens=160)
        except edgeslm.ToolCallError as exc:  # explicit, with a hint: allowed, but never a malformed call
            assert exc.hint
            failed += 1
            continue
        if choice == "auto" and not r.tool_calls:
            # in auto mode a 135M model often answers in text (how often it calls is the bench's
            # "calls made"); what must hold is that the text holds no call the parser missed
            assert r.finish_reason in ("stop", "length")
            assert get_format(smollm2.tool_format).find_call(r.text, list(schemas)) == -1, (q["id"], r.text)
        for c in r.tool_calls:
            assert c.name in schemas, (q["id"], c.name)
            errors = [e.message for e in schemas[c.name].iter_errors(c.arguments)]
            assert not errors, (q["id"], c.name, c.arguments, errors)
        assert bool(r.tool_calls) == (r.finish_reason == "tool_calls")
        emitted += len(r.tool_calls)
        most = max(most, len(r.tool_calls))
        if category not in PARALLEL:
            assert len(r.tool_calls) <= 1
    assert failed <= 1 and emitted >= PER_CATEGORY - 2
    if category in PARALLEL:
        assert most >= 2  # parallel calls in one reply


def test_bfcl_types_map_to_json_schema() -> None:
    s = to_json_schema({"type": "dict", "properties": {
        "a": {"type": "float"}, "b": {"type": "tuple", "items": {"type": "integer"}}, "c": {"type": "any"},
        "d": {"type": "string", "enum": ["dict"], "optional": True, "default": "dict"}}, "required": ["a"]})
    assert s == {"type": "object", "properties": {
        "a": {"type": "number"}, "b": {"type": "array", "items": {"type": "integer"}}, "c": {},
        "d": {"type": "string", "enum": ["dict"], "default": "dict"}}, "required": ["a"]}


QUESTION = {
    "function": [
        {"name": "area", "parameters": {"type": "dict", "properties": {
            "base": {"type": "float"}, "unit": {"type": "string"}, "sides": {"type": "array", "items": {
                "type": "integer"}}}, "required": ["base"]}},
        {"name": "perimeter", "parameters": {"type": "dict", "properties": {"n": {"type": "integer"}},
                                             "required": ["n"]}},
    ],
    "ground_truth": [{"area": {"base": [10.0], "unit": ["cm", ""], "sides": [[3, 4], ""]}}, {"perimeter": {"n": [4]}}],
}


def test_ast_checker() -> None:
    simple = {**QUESTION, "ground_truth": QUESTION["ground_truth"][:1]}
    assert ast_match("simple_python", [("area", {"base": 10})], simple)  # int accepted for float
    assert ast_match("simple_python", [("area", {"base": 10.0, "unit": " C-M."})], simple)  # normalized string
    assert ast_match("simple_python", [("area", {"base": 10.0, "sides": [3, 4]})], simple)
    assert not ast_match("simple_python", [("area", {"base": 10.0, "sides": [4, 3]})], simple)
    assert not ast_match("simple_python", [("area", {"base": 11})], simple)  # wrong value
    assert not ast_match("simple_python", [("area", {"base": "10"})], simple)  # wrong type
    assert not ast_match("simple_python", [("area", {"unit": "cm"})], simple)  # required missing
    assert not ast_match("simple_python", [("area", {"base": 10, "color": "red"})], simple)  # unknown param
    assert not ast_match("simple_python", [("perimeter", {"n": 4})], simple)  # wrong function
    assert not ast_match("simple_python", [], simple)
    both = [("perimeter", {"n": 4}), ("area", {"base": 10})]
    assert ast_match("parallel_multiple", both, QUESTION)  # any order
    assert not ast_match("parallel_multiple", both[:1], QUESTION)
    assert ast_match("irrelevance", [], {"function": []})
    assert not ast_match("irrelevance", both, {"function": []})


@requires_bfcl
@pytest.mark.timeout(600)
def test_bench_compares_auto_with_the_peer_on_the_same_work(smollm2_path: Path) -> None:
    """The BFCL section times edgeslm and llama-cpp-python's chatml-function-calling twice: as asked
    (the peer shows the tools only in a system message, so without one it answers from the question
    alone), and with a system message first, where both see the tools; the table names both ratios."""
    from edgeslm.bench.bfcl import bfcl_bench, table

    r = bfcl_bench(str(smollm2_path), per_category=1, passes=("auto",), quick=True, max_tokens=32,
                   peer_timeout_s=60.0)
    for key in ("edgeslm", "peer", "edgeslm_system", "peer_system"):
        assert r[key]["questions"] == 3 and r[key]["s_per_question"] > 0, key
        assert r[key]["completion_tokens"] is not None, key
    assert r["prompt_tokens"]["peer_with_system"] > r["prompt_tokens"]["peer"]  # the tools appear only then
    assert r["time_ratio_auto"] > 0 and r["time_ratio_auto_system"] > 0
    assert "(auto_system)" in table(r) and "generated tokens" in table(r)
