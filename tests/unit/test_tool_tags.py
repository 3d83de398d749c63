"""Tool tags that are one token of the vocabulary, in every tool-choice mode.

In Qwen 2.5 (and Hermes-style fine-tunes) ``<tool_call>`` is a *user-defined* token: llama.cpp
produces it from plain text too, and llguidance counts it as a special token, which a grammar
matches only as ``<[id]>``. A grammar that spells the tag as text then rejects the very token it
forces (``required`` failed with "the grammar rejected its own forced tokens"). Phi-4-mini's
``<|tool_call|>`` and Llama 3's ``<|python_tag|>`` are control tokens. Each format is checked here
with its tags as control tokens and as user-defined ones, in ``auto``, ``required`` and with a
named function. A real GGUF with such a vocabulary runs in ``tests/test_tool_tags_gguf.py``.
"""

from __future__ import annotations

import json

import pytest

from tests.fakes import scripted_model

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PARIS = [("get_weather", {"city": "Paris"})]


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city, e.g. Paris.
    """
    return f"sunny in {city}"


def get_time(zone: str) -> str:
    """Get the time in a time zone."""
    return "12:00"


def _obj(key: str = "arguments") -> str:
    return json.dumps({"name": "get_weather", key: {"city": "Paris"}})


# format -> what the model writes in its own syntax (what `required` forces, too)
NATIVE = {
    "hermes": f"<tool_call>\n{_obj()}\n</tool_call>",
    "phi4": f"<|tool_call|>[{_obj()}]<|/tool_call|>",
    "llama3": _obj("parameters"),
    "gemma3": f"[{_obj()}]",
}
# format -> a tagged reply `auto` must catch (the tag is the reply's first token)
TAGGED = {
    "hermes": NATIVE["hermes"],
    "phi4": NATIVE["phi4"],
    "llama3": f"<|python_tag|>{_obj('parameters')}",
    "gemma3": NATIVE["gemma3"],
}
CHOICES = {
    "auto": "auto",
    "required": "required",
    "named": {"type": "function", "function": {"name": "get_weather"}},
}


@pytest.mark.parametrize("user_defined", [False, True], ids=["control", "user-defined"])
@pytest.mark.parametrize("choice", list(CHOICES))
@pytest.mark.parametrize("fmt", list(NATIVE))
def test_calls_with_tag_tokens(fmt: str, choice: str, user_defined: bool) -> None:
    reply = TAGGED[fmt] if choice == "auto" else NATIVE[fmt]
    model = scripted_model(fmt, reply, user_defined_tags=user_defined)
    r = model.chat(ASK, tools=[get_weather, get_time], tool_choice=CHOICES[choice], temperature=0, max_tokens=80)
    assert [(c.name, c.arguments) for c in r.tool_calls] == PARIS, r.text
    assert r.finish_reason == "tool_calls"


@pytest.mark.parametrize("fmt", ["hermes", "phi4"])
def test_forced_tag_is_the_tag_token(fmt: str) -> None:
    # `required` forces the tag as the vocabulary's one token, not as its spelling in bytes
    model = scripted_model(fmt, NATIVE[fmt], user_defined_tags=True)
    engine = model._engine
    r = model.chat(ASK, tools=[get_weather], tool_choice="required", temperature=0, max_tokens=80)
    assert r.tool_calls
    tag = "<tool_call>" if fmt == "hermes" else "<|tool_call|>"
    tag_id = engine.vocab.special[tag]
    prompt = model.chat_prompt(ASK, tools=[get_weather])
    assert tag_id in engine.tokens[len(prompt):]
