"""Tool tags as tokens of a real GGUF vocabulary, through llama.cpp and llguidance.

The bundled SmolLM2 is copied with three unused vocabulary entries renamed (no tensor changes):
``<tool_call>`` / ``</tool_call>`` as *user-defined* tokens, as in Qwen 2.5's GGUF (llama.cpp makes
them from plain text too; llguidance counts them as special), and ``<|python_tag|>`` as a control
token, as in Llama 3. ``tool_choice="required"`` failed on such a vocabulary with "the grammar
rejected its own forced tokens" (the grammar spelled the tag as text). The scripted tests in
``tests/unit/test_tool_tags.py`` cover every format and ``auto``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._gguf_edit import CONTROL, USER_DEFINED, rename_tokens
from tests.conftest import requires_smollm2

pytestmark = requires_smollm2

ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city, e.g. Paris.
    """
    return f"sunny in {city}"


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path):
    import edgeslm

    path = rename_tokens(smollm2_path, tmp_path_factory.mktemp("tags") / "smollm2-tags.gguf",
                         {3: ("<tool_call>", USER_DEFINED), 4: ("</tool_call>", USER_DEFINED),
                          5: ("<|python_tag|>", CONTROL)})
    m = edgeslm.load(path, n_ctx=2048)
    yield m
    m.close()


def test_user_defined_tags_are_found(tagged) -> None:
    # the tag is one token with or without control-token parsing
    assert tagged.tokenize("<tool_call>") == tagged.tokenize("<tool_call>", special=True) == [3]
    assert tagged.tool_format == "hermes"  # was "llama3": the user-defined <tool_call> went unseen


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}],
                         ids=["required", "named"])
def test_required_and_named_force_the_tag_token(tagged, choice) -> None:
    r = tagged.chat(ASK, tools=[get_weather], tool_choice=choice, temperature=0, max_tokens=60)
    assert [c.name for c in r.tool_calls] == ["get_weather"]
    assert isinstance(r.tool_calls[0].arguments.get("city"), str)
    prompt = tagged.chat_prompt(ASK, tools=[get_weather])
    reply = tagged._engine.tokens[len(prompt):]
    assert reply[:1] == [3]  # the tag was forced as its token, not spelled
