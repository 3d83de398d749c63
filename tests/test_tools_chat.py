"""Tool calls with the real model (SmolLM2 135M): choice modes, parallel calls, every native format,
streaming, conversations with tool results, and the run loop."""

from __future__ import annotations

import enum
import json
from typing import Literal

import pytest

import edgeslm
from edgeslm.decoding.schema import make_validator
from edgeslm.tools import as_tools, get_format

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0, "max_tokens": 48, "seed": 0}  # seeded: re-sampled retries are reproducible too


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


def get_weather(city: str, unit: Unit = Unit.C) -> str:
    """Get the current weather in a city.

    Args:
        city: The city, e.g. Paris.
        unit: Temperature unit.
    """
    return f"22 degrees {unit.value} in {city}"


def calculator(expression: str, precision: Literal[0, 1, 2] = 2) -> float:
    """Evaluate an arithmetic expression.

    Args:
        expression: Like "2 * (3 + 4)".
        precision: Digits after the point.
    """
    raise ValueError("the calculator is broken")


def forecast(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Get the current weather in a city.

    Args:
        city: The city name, e.g. Paris.
        unit: Temperature unit.
    """
    return f"22 degrees {unit} in {city}"


def _assert_valid(calls: list[edgeslm.ToolCall], tools: list) -> None:
    schemas = {t.name: t.parameters for t in as_tools(tools)}
    for c in calls:
        assert c.name in schemas and c.id.startswith("call_")
        make_validator(schemas[c.name]).validate(c.arguments)


def test_required_named_and_none(smollm2: edgeslm.Model) -> None:
    tools = [get_weather, calculator]
    r = smollm2.chat(ASK, tools=tools, tool_choice="required", **GREEDY)
    assert r.tool_calls and r.finish_reason == "tool_calls"
    _assert_valid(r.tool_calls, tools)
    d = r.to_dict()["choices"][0]
    assert d["finish_reason"] == "tool_calls" and d["message"]["tool_calls"][0]["type"] == "function"
    assert json.loads(d["message"]["tool_calls"][0]["function"]["arguments"]) == r.tool_calls[0].arguments

    r = smollm2.chat(ASK, tools=tools, tool_choice={"type": "function", "function": {"name": "calculator"}}, **GREEDY)
    assert [c.name for c in r.tool_calls] == ["calculator"]
    _assert_valid(r.tool_calls, tools)

    r = smollm2.chat(ASK, tools=tools, tool_choice="none", **GREEDY)
    assert not r.tool_calls and r.text and r.finish_reason in ("stop", "length")


def test_auto_catches_a_call_and_keeps_text(smollm2: edgeslm.Model) -> None:
    # SmolLM2 answers this in Llama 3's typed JSON, {"type": "function", "name": ...}, without any tag
    tools = [get_weather, calculator]
    saved = smollm2.tool_format
    smollm2.tool_format = "llama3"
    try:
        ask = [{"role": "user", "content": "Call get_weather for Oslo."}]
        r = smollm2.chat(ask, tools=tools, tool_choice="auto", **GREEDY)
        assert r.tool_calls and r.finish_reason == "tool_calls" and r.error is None
        assert [c.name for c in r.tool_calls] == ["get_weather"] and r.tool_calls[0].arguments["city"] == "Oslo"
        _assert_valid(r.tool_calls, tools)
        chunks = list(smollm2.chat(ask, tools=tools, tool_choice="auto", stream=True, **GREEDY))
        assert [[c.arguments for c in ch.tool_calls] for ch in chunks if ch.tool_calls] == [
            [c.arguments for c in r.tool_calls]]
        assert "".join(c.delta for c in chunks).strip() == r.text
        haiku = [{"role": "user", "content": "Write a haiku about the sea."}]
        r = smollm2.chat(haiku, tools=tools, tool_choice="auto", **GREEDY)
        assert not r.tool_calls and r.text.strip() and r.finish_reason in ("stop", "length")
        assert get_format("llama3").find_call(r.text, ["get_weather", "calculator"]) == -1
        chunks = list(smollm2.chat(haiku, tools=tools, tool_choice="auto", stream=True, **GREEDY))
        assert "".join(c.delta for c in chunks) == r.text and chunks[-1].finish_reason == r.finish_reason
    finally:
        smollm2.tool_format = saved


def test_auto_calls_in_every_form_the_model_chooses(smollm2: edgeslm.Model) -> None:
    # Text answers never hold a call, and calls are valid. SmolLM2 writes calls in several forms
    # here (typed JSON, a bare object, a fenced Python-style call), so the call path is exercised.
    saved = smollm2.tool_format
    calls = 0
    try:
        for fmt in ("generic", "llama3", "gemma3", "phi4"):
            smollm2.tool_format = fmt
            for content in ("Call get_weather for Oslo.", "Use the get_weather tool to get the weather in Oslo."):
                r = smollm2.chat([{"role": "user", "content": content}], tools=[get_weather], tool_choice="auto",
                                 **GREEDY)
                if r.tool_calls:
                    _assert_valid(r.tool_calls, [get_weather])
                    calls += 1
                else:
                    assert get_format(fmt).find_call(r.text, ["get_weather"]) == -1, r.text
    finally:
        smollm2.tool_format = saved
    assert calls >= 3


def test_parallel_calls_and_single_call(smollm2: edgeslm.Model) -> None:
    # several calls in one reply: the grammar test in test_tools_formats.py and the BFCL parallel sample
    many = smollm2.chat(ASK, tools=[forecast], tool_choice="required", parallel_tool_calls=True, **GREEDY)
    assert 1 <= len(many.tool_calls) <= 8
    _assert_valid(many.tool_calls, [forecast])
    assert len({c.id for c in many.tool_calls}) == len(many.tool_calls)
    one = smollm2.chat(ASK, tools=[forecast], tool_choice="required", parallel_tool_calls=False, **GREEDY)
    assert len(one.tool_calls) == 1
    _assert_valid(one.tool_calls, [forecast])


@pytest.mark.parametrize("fmt", ["hermes", "phi4", "llama3", "gemma3", "generic"])
def test_every_native_format_generates_valid_calls(smollm2: edgeslm.Model, fmt: str) -> None:
    saved = smollm2.tool_format
    smollm2.tool_format = fmt
    try:
        # room for two calls (hermes makes two): with 48 tokens the greedy attempt was cut off and
        # the result depended on unseeded re-sampling
        r = smollm2.chat(ASK, tools=[get_weather, calculator], tool_choice="required", **{**GREEDY, "max_tokens": 96})
        assert r.tool_calls and r.finish_reason == "tool_calls"
        _assert_valid(r.tool_calls, [get_weather, calculator])
        # the next turn accepts the calls and their results, rendered in the same format
        follow = [*ASK, r.to_dict()["choices"][0]["message"],
                  *({"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in r.tool_calls)]
        prompt = smollm2.chat_prompt(follow)
        assert prompt == smollm2.chat_prompt(follow)  # renders; text answers with tool_choice="none"
        r2 = smollm2.chat(follow, tools=[get_weather], tool_choice="none", max_tokens=4, temperature=0)
        assert r2.finish_reason in ("stop", "length") and not r2.tool_calls
    finally:
        smollm2.tool_format = saved


def test_catalog_and_override(smollm2: edgeslm.Model) -> None:
    assert smollm2.tool_format == "generic"  # from the catalog entry


def test_stream_yields_text_or_complete_calls(smollm2: edgeslm.Model) -> None:
    chunks = list(smollm2.chat(ASK, tools=[get_weather], tool_choice="required", stream=True, **GREEDY))
    with_calls = [c for c in chunks if c.tool_calls]
    assert len(with_calls) == 1 and chunks[-1].finish_reason == "tool_calls" and chunks[-1].usage is not None
    _assert_valid(with_calls[0].tool_calls, [get_weather])
    assert with_calls[0].to_dict()["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    text_chunks = list(smollm2.chat([{"role": "user", "content": "Say hello."}], tools=[get_weather],
                                    tool_choice="none", stream=True, max_tokens=12, temperature=0))
    assert "".join(c.delta for c in text_chunks) and not any(c.tool_calls for c in text_chunks)


def test_relaxed_schema_is_validated(smollm2: edgeslm.Model) -> None:
    tool = {"type": "function", "function": {"name": "pick", "description": "Pick distinct numbers.", "parameters": {
        "type": "object", "properties": {"nums": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True,
                                                   "minItems": 2, "maxItems": 3}},
        "required": ["nums"]}}}
    r = smollm2.chat([{"role": "user", "content": "Pick two numbers."}], tools=[tool], tool_choice="required",
                     **{**GREEDY, "seed": 1})
    _assert_valid(r.tool_calls, [tool])
    assert all(len(set(c.arguments["nums"])) == len(c.arguments["nums"]) for c in r.tool_calls)


def test_a_call_that_cannot_be_produced_is_an_error(smollm2: edgeslm.Model) -> None:
    with pytest.raises(edgeslm.ToolCallError) as e:
        smollm2.chat(ASK, tools=[get_weather], tool_choice="required", max_tokens=3, temperature=0)
    assert "cut off" in str(e.value) and e.value.hint


def test_usage_errors(smollm2: edgeslm.Model) -> None:
    with pytest.raises(edgeslm.ToolCallError, match="not among the tools"):
        smollm2.chat(ASK, tools=[get_weather], tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(edgeslm.ToolCallError, match="needs tools"):
        smollm2.chat(ASK, tool_choice="required")
    with pytest.raises(edgeslm.ToolCallError, match="unknown tool_choice"):
        smollm2.chat(ASK, tools=[get_weather], tool_choice="sometimes")
    with pytest.raises(edgeslm.ToolCallError, match="cannot be combined"):
        smollm2.chat(ASK, tools=[get_weather], response_format={"type": "json_object"})
    with pytest.raises(edgeslm.InvalidRequestError, match="max_rounds") as e:
        smollm2.run_tools(ASK, [get_weather], max_rounds=0)
    assert isinstance(e.value, ValueError) and e.value.hint
    with pytest.raises(edgeslm.ToolCallError, match="no Python function") as e:
        smollm2.run_tools(ASK, [{"type": "function", "function": {"name": "remote"}}])
    assert e.value.hint
    with pytest.raises(edgeslm.ToolCallError, match="cannot be enforced"):
        smollm2.chat(ASK, tools=[{"name": "bad", "parameters": {"type": "object", "properties": {
            "x": {"$ref": "https://example.com/schema.json"}}}}], tool_choice="required")


def test_run_tools_executes_and_survives_a_failing_tool(smollm2: edgeslm.Model) -> None:
    run = smollm2.run_tools(
        [{"role": "user", "content": "What is 2 * (3 + 4)?"}], [get_weather, calculator], max_rounds=2,
        tool_choice={"type": "function", "function": {"name": "calculator"}}, **GREEDY,
    )
    assert isinstance(run, edgeslm.ToolRun)
    assert run.stopped_reason in ("answer", "max_rounds") and 1 <= run.rounds <= 2
    assert run.calls and run.calls[0].name == "calculator"
    tool_msgs = [m for m in run.messages if m["role"] == "tool"]
    assert tool_msgs[0]["content"] == "Error: ValueError: the calculator is broken"
    assert tool_msgs[0]["tool_call_id"] == run.calls[0].id
    assert run.messages[1]["role"] == "assistant" and run.messages[1]["tool_calls"]
    if run.stopped_reason == "answer":
        assert run.messages[-1]["role"] == "assistant" and not run.result.tool_calls
    else:
        assert run.rounds == 2 and run.result.tool_calls


def test_run_tools_stops_at_max_rounds(smollm2: edgeslm.Model) -> None:
    calls: list[str] = []

    @edgeslm.tool(description="Look something up.")
    def lookup(query: str) -> dict:
        calls.append(query)
        return {"query": query, "found": False}

    run = smollm2.run_tools([{"role": "user", "content": "Look up the capital of France."}], [lookup],
                            max_rounds=1, tool_choice="required", **GREEDY)
    assert run.stopped_reason == "max_rounds" and run.rounds == 1 and calls
    assert json.loads(run.messages[-1]["content"])["found"] is False
