"""Tool calls in ``auto`` mode, with a scripted model (tests/fakes.py) driven through the real
``Model``, decoding loop and constraints: however the reply starts a call, it is caught, constrained
and returned; the text before it is the content; text that only mentions braces stays text.
No model file and no llama.cpp needed."""

from __future__ import annotations

import asyncio
import json

import pytest

import edgeslm
from tests.fakes import scripted_model

ASK = [{"role": "user", "content": "What is the weather in Paris and in Oslo?"}]
PARIS = ("get_weather", {"city": "Paris"})
OSLO = ("get_weather", {"city": "Oslo"})


def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city.

    Args:
        city: The city, e.g. Paris.
        unit: "celsius" or "fahrenheit".
    """
    return f"sunny in {city}"


def get_time(zone: str) -> str:
    """Get the time in a time zone."""
    return "12:00"


def obj(city: str = "Paris", key: str = "arguments") -> str:
    return json.dumps({"name": "get_weather", key: {"city": city}})


ARGS_KEY = {"hermes": "arguments", "phi4": "arguments", "llama3": "parameters", "gemma3": "arguments",
            "generic": "arguments"}

# format -> case -> (what the model writes, expected content, expected calls)
CASES: dict[str, dict[str, tuple[str, str, list[tuple[str, dict]]]]] = {}
for _fmt, _k in ARGS_KEY.items():
    CASES[_fmt] = {
        "bare": (obj(key=_k), "", [PARIS]),
        "fenced": (f"```json\n{obj(key=_k)}\n```", "", [PARIS]),
        "after_text": (f"Let me check the weather. {obj(key=_k)}", "Let me check the weather.", [PARIS]),
        "fenced_after_text": (f"Sure, here it is:\n```json\n[{obj(key=_k)}]\n```", "Sure, here it is:", [PARIS]),
    }
CASES["hermes"].update({
    "tagged": (f"<tool_call>\n{obj()}\n</tool_call>", "", [PARIS]),
    "tagged_after_text": (f"I will look it up.\n<tool_call>\n{obj()}\n</tool_call>", "I will look it up.", [PARIS]),
    "two": (f"<tool_call>\n{obj()}\n</tool_call>\n<tool_call>\n{obj('Oslo')}\n</tool_call>", "", [PARIS, OSLO]),
    "two_bare": (f"{obj()}\n{obj('Oslo')}", "", [PARIS, OSLO]),
})
CASES["phi4"].update({
    "tagged": (f"<|tool_call|>[{obj()}]<|/tool_call|>", "", [PARIS]),
    "tagged_after_text": (f"Let me see.<|tool_call|>[{obj()}]<|/tool_call|>", "Let me see.", [PARIS]),
    "two": (f"<|tool_call|>[{obj()}, {obj('Oslo')}]<|/tool_call|>", "", [PARIS, OSLO]),
    "functools": (f"functools[{obj()}, {obj('Oslo')}]", "", [PARIS, OSLO]),
    "list": (f"[{obj()}]", "", [PARIS]),
})
CASES["llama3"].update({
    "tagged": (f"<|python_tag|>{obj(key='parameters')}", "", [PARIS]),
    "typed": ('{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}', "", [PARIS]),
    "two": (f"{obj(key='parameters')}; {obj('Oslo', key='parameters')}", "", [PARIS, OSLO]),
    "pythonic": ('[get_weather(city="Paris"), get_weather(city="Oslo", unit="celsius")]', "",
                 [PARIS, ("get_weather", {"city": "Oslo", "unit": "celsius"})]),
})
CASES["gemma3"].update({
    "tagged": ('```tool_code\nget_weather(city="Paris")\n```', "", [PARIS]),
    "list": (f"[{obj()}]", "", [PARIS]),
    "two": ('[get_weather(city="Paris"), get_weather(city="Oslo")]', "", [PARIS, OSLO]),
    "two_json": (f"[{obj()}, {obj('Oslo')}]", "", [PARIS, OSLO]),
    "pythonic_after_text": ('Checking. [get_weather(city="Paris")]', "Checking.", [PARIS]),
})
CASES["generic"].update({
    "tagged": (f"<tool_call>[{obj()}]</tool_call>", "", [PARIS]),
    "native": (f'{{"tool_calls": [{obj()}, {obj("Oslo")}]}}', "", [PARIS, OSLO]),
    "two": (f'Two calls: {{"tool_calls": [{obj()}, {obj("Oslo")}]}}', "Two calls:", [PARIS, OSLO]),
    "function_key": ('{"function": "get_weather", "arguments": {"city": "Paris"}}', "", [PARIS]),
})
PARAMS = [(f, c) for f in CASES for c in CASES[f]]

# Text that mentions braces, brackets, code or a tool's name is an answer, not a call.
TEXTS = [
    'Use {x} or [1, 2]; JSON like {"city": "Oslo"} is fine.',
    "In Python: `get_weather(city)` or [f(x) for x in y], see [the docs](https://x.org).",
    '```json\n{"city": "Paris", "name": "x"}\n```',
    "The tool_calls field and {name} placeholders.",
]


def _calls(r: edgeslm.ChatResult) -> list[tuple[str, dict]]:
    return [(c.name, c.arguments) for c in r.tool_calls]


@pytest.mark.parametrize(("fmt", "case"), PARAMS)
def test_auto_catches_every_form(fmt: str, case: str) -> None:
    reply, content, calls = CASES[fmt][case]
    model = scripted_model(fmt, reply)
    r = model.chat(ASK, tools=[get_weather, get_time], tool_choice="auto", temperature=0, max_tokens=200)
    assert (r.text, _calls(r), r.finish_reason, r.error) == (content, calls, "tool_calls", None)
    assert all(c.id.startswith("call_") for c in r.tool_calls) and len({c.id for c in r.tool_calls}) == len(calls)
    # streamed: the content as deltas (never a piece of the call), then the calls
    chunks = list(model.chat(ASK, tools=[get_weather, get_time], tool_choice="auto", temperature=0,
                             max_tokens=200, stream=True))
    assert "".join(c.delta for c in chunks).strip() == content
    assert [_calls(c) for c in chunks if c.tool_calls] == [calls] and chunks[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize("fmt", sorted(ARGS_KEY))
@pytest.mark.parametrize("text", TEXTS)
def test_text_with_braces_stays_text(fmt: str, text: str) -> None:
    model = scripted_model(fmt, text)
    r = model.chat(ASK, tools=[get_weather, get_time], tool_choice="auto", temperature=0, max_tokens=200)
    assert (r.text, r.tool_calls, r.finish_reason, r.error) == (text, [], "stop", None)
    chunks = list(model.chat(ASK, tools=[get_weather], tool_choice="auto", temperature=0, max_tokens=200,
                             stream=True))
    assert "".join(c.delta for c in chunks) == text


@pytest.mark.parametrize("fmt", sorted(ARGS_KEY))
def test_a_call_that_runs_out_of_tokens_is_reported(fmt: str) -> None:
    model = scripted_model(fmt, f"Sure. {obj(key=ARGS_KEY[fmt])}")
    r = model.chat(ASK, tools=[get_weather], tool_choice="auto", temperature=0, max_tokens=9)
    assert (r.text, r.tool_calls, r.finish_reason) == ("Sure.", [], "length")
    assert isinstance(r.error, edgeslm.ToolCallError) and "cut off" in r.error.message and r.error.hint
    assert r.usage.completion_tokens == 9
    last = list(model.chat(ASK, tools=[get_weather], tool_choice="auto", temperature=0, max_tokens=9,
                           stream=True))[-1]
    assert last.finish_reason == "length" and isinstance(last.error, edgeslm.ToolCallError)
    # with room, the same reply is a call
    r = model.chat(ASK, tools=[get_weather], tool_choice="auto", temperature=0, max_tokens=60)
    assert (r.text, _calls(r), r.error) == ("Sure.", [PARIS], None)


def test_the_call_is_constrained_from_the_trigger_on() -> None:
    # the model starts to name a tool that is not offered: from '{"name": ' on only offered tools can
    # be written (here the one tool's name is forced), and the model goes on from there
    model = scripted_model("hermes", ['OK. {"name": "get_time", "arguments": {"zone": "CET"}}',
                                      f"OK. {obj('Oslo')}"])
    r = model.chat(ASK, tools=[get_weather], tool_choice="auto", temperature=0, max_tokens=60)
    assert (r.text, _calls(r)) == ("OK.", [OSLO])
    assert r.usage.forced_tokens > 0


def test_parallel_calls_can_be_refused() -> None:
    reply, _, _ = CASES["hermes"]["two"]
    model = scripted_model("hermes", reply)
    r = model.chat(ASK, tools=[get_weather], tool_choice="auto", parallel_tool_calls=False, temperature=0,
                   max_tokens=200)
    assert _calls(r) == [PARIS]


def test_an_opening_that_does_not_fit_is_generated_again() -> None:
    # '": {' straddles the trigger: '{"name": {' cannot be a call; the retry writes one natively
    model = scripted_model("hermes", ['{"name": {"x": 1}}', f"<tool_call>\n{obj('Oslo')}\n</tool_call>"])
    r = model.chat(ASK, tools=[get_weather], tool_choice="auto", temperature=0, max_tokens=60)
    assert (r.text, _calls(r), r.finish_reason) == ("", [OSLO], "tool_calls")


def test_text_before_the_call_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    # no grammar mask on the text: masks are computed only from the token where the call begins
    from edgeslm.decoding.constrain import GrammarConstraint as ToolConstraint

    masks = []
    real = ToolConstraint.mask
    monkeypatch.setattr(ToolConstraint, "mask", lambda self, logits: masks.append(1) or real(self, logits))
    text = "Plain words, then a call: "
    model = scripted_model("llama3", text + obj(key="parameters"))
    r = model.chat(ASK, tools=[get_weather], tool_choice="auto", temperature=0, max_tokens=60)
    assert _calls(r) == [PARIS] and r.text == text.strip()
    n_text = len(model.tokenize(text))
    assert 0 < len(masks) <= r.usage.completion_tokens - n_text


def test_required_and_named_still_write_the_native_syntax() -> None:
    model = scripted_model("phi4", f"<|tool_call|>[{obj()}]<|/tool_call|>")
    r = model.chat(ASK, tools=[get_weather, get_time], tool_choice="required", temperature=0, max_tokens=60)
    assert _calls(r) == [PARIS] and r.finish_reason == "tool_calls"
    r = model.chat(ASK, tools=[get_weather, get_time],
                   tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0,
                   max_tokens=60)
    assert _calls(r) == [PARIS]


def test_run_tools_stops_at_a_call_cut_off() -> None:
    model = scripted_model("hermes", f"<tool_call>\n{obj()}\n</tool_call>")
    with pytest.raises(edgeslm.ToolCallError, match="cut off") as e:
        model.run_tools(ASK, [get_weather], max_tokens=6, temperature=0)
    assert e.value.hint
    run = model.run_tools(ASK, [get_weather], max_rounds=1, max_tokens=60, temperature=0)
    assert [(c.name, c.arguments) for c in run.calls] == [PARIS] and run.stopped_reason == "max_rounds"
    assert run.messages[-1] == {"role": "tool", "tool_call_id": run.calls[0].id, "name": "get_weather",
                                "content": "sunny in Paris"}


async def get_weather_async(city: str) -> str:
    """Get the current weather in a city (an async tool).

    Args:
        city: The city, e.g. Paris.
    """
    await asyncio.sleep(0)
    return f"sunny in {city}"


@pytest.mark.parametrize("tool_timeout", [None, 5.0])
def test_run_tools_runs_an_async_tool_inside_a_running_event_loop(tool_timeout: float | None) -> None:
    # run_tools called from async code: the async tool's result (not an "Error:" string) reaches the
    # transcript. tool_timeout=None runs the tool in the caller's thread, the one with the running loop.
    model = scripted_model("hermes", '<tool_call>\n{"name": "get_weather_async", "arguments": {"city": "Paris"}}'
                                     "\n</tool_call>")

    async def main() -> edgeslm.ToolRun:
        asyncio.get_running_loop()  # a loop runs in this thread
        return model.run_tools(ASK, [get_weather_async], max_rounds=1, max_tokens=60, temperature=0,
                               tool_timeout=tool_timeout)

    run = asyncio.run(main())
    assert [(c.name, c.arguments) for c in run.calls] == [("get_weather_async", {"city": "Paris"})]
    assert run.messages[-1] == {"role": "tool", "tool_call_id": run.calls[0].id, "name": "get_weather_async",
                                "content": "sunny in Paris"}
