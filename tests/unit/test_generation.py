"""The engine boundary and the generation service without a real model: a scripted backend
registered through the backend registry is loaded with ``edgeslm.load`` and runs chat, extract
and tool calls; the one retry policy; constraint state freed with the model."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from typing import Any

import pytest

import edgeslm
from edgeslm.api.generation import RETRIES_EXACT, RETRIES_RELAXED
from edgeslm.backends import registry
from edgeslm.decoding import constrain
from tests.fakes import SCRIPTED_SPEC, ScriptedBackend, write_script


def _load(tmp_path: Path, fmt: str, reply: Any, name: str = "m") -> edgeslm.Model:
    path = write_script(tmp_path / f"{name}.script.json", fmt, reply)
    return edgeslm.load(path, tool_format=fmt)


# ----------------------------------------------------------------------------- the registry


def test_the_registry_lists_the_builtins_and_a_registered_backend() -> None:
    names = registry.backend_names()
    assert names[:2] == ("llama.cpp", "onnx") and "scripted" in names
    assert registry.backend_for_format("gguf").name == "llama.cpp"
    assert registry.backend_for_format("onnx").offloads_layers is False
    with pytest.raises(edgeslm.BackendUnavailableError, match="no backend serves"):
        registry.backend_for_format("mlx")
    with pytest.raises(edgeslm.BackendUnavailableError, match="already registered"):
        registry.register_backend(SCRIPTED_SPEC)


def test_load_finds_the_backend_for_a_path_and_explains_a_wrong_one(tmp_path: Path) -> None:
    path = write_script(tmp_path / "a.script.json", "hermes", "Hi.")
    spec, root = registry.backend_for_path(path)
    assert spec.name == "scripted" and root == path
    m = edgeslm.load(path)
    assert m.backend == "scripted" and m.plan is not None and m.plan.backend == "scripted"
    assert any("scripted backend" in w for w in m.plan.why)
    m.close()
    with pytest.raises(edgeslm.BackendUnavailableError, match="not an ONNX Runtime GenAI folder"):
        edgeslm.load(path, backend="onnx")
    with pytest.raises(edgeslm.BackendUnavailableError, match="unknown backend"):
        edgeslm.load(path, backend="mlx")
    empty = tmp_path / "folder"
    empty.mkdir()
    with pytest.raises(edgeslm.ModelNotFoundError):
        edgeslm.load(empty)


def test_an_unregistered_backend_is_no_longer_found(tmp_path: Path) -> None:
    path = write_script(tmp_path / "b.script.json", "hermes", "Hi.")
    registry.unregister_backend("scripted")
    try:
        # the catch-all llama.cpp backend now claims the file, and its header check refuses it
        with pytest.raises(edgeslm.EdgeSLMError):
            edgeslm.load(path)
    finally:
        registry.register_backend(SCRIPTED_SPEC, replace=True)


# ----------------------------------------------------------------------------- chat, extract, tools


def test_chat_and_stream_through_the_registry(tmp_path: Path) -> None:
    m = _load(tmp_path, "hermes", "The answer is 42.")
    r = m.chat([{"role": "user", "content": "What is it?"}], temperature=0)
    assert r.text == "The answer is 42." and r.finish_reason == "stop"
    assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 3
    chunks = list(m.chat([{"role": "user", "content": "What is it?"}], temperature=0, stream=True))
    assert "".join(c.delta for c in chunks) == r.text and chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.reused_prompt_tokens > 0  # the same prompt: the cache was reused
    r = m.chat([{"role": "user", "content": "What is it?"}], temperature=0, stop=["is"])
    assert r.text == "The answer " and r.finish_reason == "stop"
    m.close()
    assert m.closed
    with pytest.raises(edgeslm.ModelClosedError):
        m.chat([{"role": "user", "content": "x"}])


def test_extract_through_the_registry(tmp_path: Path) -> None:
    m = _load(tmp_path, "hermes", '{"city":"Paris","days":3}')
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["city", "days"]}
    x = m.extract("Three days in Paris.", schema)
    assert x.data == {"city": "Paris", "days": 3} and x.attempts == 1 and x.support.exact
    assert 0.9 < x.confidence <= 1.0  # the script put nearly all the mass on each token
    assert x.usage.forced_tokens > 0  # {"city":" ... are forced by the grammar
    m.close()


def test_tool_calls_through_the_registry(tmp_path: Path) -> None:
    def get_weather(city: str) -> str:
        """Weather of a city."""
        return f"sunny in {city}"

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    m = _load(tmp_path, "hermes", [call])
    r = m.chat([{"role": "user", "content": "Weather in Paris?"}], tools=[get_weather], temperature=0)
    assert r.finish_reason == "tool_calls" and [(c.name, c.arguments) for c in r.tool_calls] == [
        ("get_weather", {"city": "Paris"})]
    assert r.confidence is not None and 0.9 < r.confidence <= 1.0  # the script is sure of every token
    m.close()


# ----------------------------------------------------------------------------- the retry policy


class Relapsing(ScriptedBackend):
    """Writes replies[k] on its k-th attempt at a reply (an attempt restarts by trimming the cache)."""

    def __init__(self, replies: list[str], **kw: Any) -> None:
        super().__init__(replies, **kw)
        self.attempt = 0

    def trim(self, n_keep: int) -> None:
        self.attempt += 1
        super().trim(n_keep)

    def logits(self):  # type: ignore[no-untyped-def]
        saved = self.replies
        self.replies = [saved[min(self.attempt, len(saved) - 1)]]
        try:
            return super().logits()
        finally:
            self.replies = saved


def _relapsing_model(replies: list[str]) -> edgeslm.Model:
    from edgeslm.decoding.template import CHATML_TEMPLATE, ChatTemplate

    engine = Relapsing(replies, marker="<|im_start|>assistant\n")
    return edgeslm.Model(engine, name="relapsing", template=ChatTemplate(CHATML_TEMPLATE), tool_format="hermes")


# relaxed: the grammar cannot enforce that the two items differ, the validator can
UNIQUE = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}},
          "required": ["tags"]}


def test_a_failed_attempt_is_retried_and_usage_sums_every_attempt() -> None:
    m = _relapsing_model(['{"tags":["a","a"]}', '{"tags":["a","b"]}'])
    x = m.extract("tags a and b", UNIQUE)
    assert not x.support.exact and x.data == {"tags": ["a", "b"]} and x.attempts == 2
    single = m.extract("tags a and b", UNIQUE, retries=0)  # attempt counter is past the bad one now
    assert x.usage.completion_tokens > single.usage.completion_tokens  # both attempts counted
    m.close()


@pytest.mark.parametrize("retries,expected", [(None, 1 + RETRIES_RELAXED), (0, 1), (1, 2)])
def test_the_retry_policy_bounds_the_attempts(retries: int | None, expected: int) -> None:
    m = _relapsing_model(['{"tags":["a","a"]}'])  # always invalid
    with pytest.raises(edgeslm.ExtractionFailed) as ei:
        m.extract("tags", UNIQUE, retries=retries)
    assert ei.value.attempts == expected and m._engine.attempt == expected - 1
    assert "uniqueItems" in " ".join(ei.value.errors) or "non-unique" in " ".join(ei.value.errors)
    m.close()


def test_tool_calls_follow_the_same_retry_policy() -> None:
    assert RETRIES_EXACT < RETRIES_RELAXED
    tag_tool = {"type": "function", "function": {"name": "tag", "description": "Tag it.", "parameters": UNIQUE}}
    bad = '<tool_call>\n{"name": "tag", "arguments": {"tags": ["a", "a"]}}\n</tool_call>'
    good = '<tool_call>\n{"name": "tag", "arguments": {"tags": ["a", "b"]}}\n</tool_call>'
    m = _relapsing_model([bad])
    with pytest.raises(edgeslm.ToolCallError, match=f"after {1 + RETRIES_RELAXED} attempt"):
        m.chat([{"role": "user", "content": "tag a, b"}], tools=[tag_tool], tool_choice="required")
    m.close()
    m = _relapsing_model([bad, good])
    r = m.chat([{"role": "user", "content": "tag a, b"}], tools=[tag_tool], tool_choice="required")
    assert r.tool_calls[0].arguments == {"tags": ["a", "b"]} and m._engine.attempt == 1
    m.close()


# ----------------------------------------------------------------------------- constraint state


def test_closing_a_model_frees_its_tokenizer_and_grammars(tmp_path: Path) -> None:
    m = _load(tmp_path, "hermes", '{"a":1}')
    m.extract("a is 1", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    engine = m._engine
    cache = constrain.constraints(engine)
    assert len(cache) >= 1 and cache._tokenizer is not None
    m.close()
    assert len(cache) == 0 and cache._tokenizer is None and engine.closed
    assert constrain.constraints(engine) is not cache  # nothing kept for a closed engine


def test_a_model_dropped_without_close_frees_everything(tmp_path: Path) -> None:
    m = _load(tmp_path, "hermes", '{"a":1}')
    m.extract("a is 1", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    engine_ref = weakref.ref(m._engine)
    cache_ref = weakref.ref(constrain.constraints(m._engine))
    gc.collect()  # models other tests dropped go first
    before = constrain.live_caches()
    del m
    gc.collect()
    assert engine_ref() is None and cache_ref() is None
    assert constrain.live_caches() == before - 1


def test_grammars_are_compiled_once_per_model_and_bounded(tmp_path: Path) -> None:
    m = _load(tmp_path, "hermes", '{"a":1}')
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    m.extract("a is 1", schema)
    cache = constrain.constraints(m._engine)
    n = len(cache)
    m.extract("a is 1 again", schema)
    assert len(cache) == n
    cache.max_matchers = 2
    for i in range(4):
        m.extract("a is 1", {**schema, "properties": {"a": {"type": "integer", "minimum": -i}}})
    assert len(cache) == 2
    m.close()


def test_json_of_every_reply_is_what_the_script_wrote(tmp_path: Path) -> None:
    m = _load(tmp_path, "hermes", '{"items":["x","y"]}')
    r = m.chat([{"role": "user", "content": "list"}], response_format={"type": "json_object"}, temperature=0)
    assert json.loads(r.text) == {"items": ["x", "y"]}
    m.close()


def test_a_model_without_template_is_prompted_by_what_its_name_says_it_is() -> None:
    from edgeslm.decoding.template import GEMMA_TEMPLATE, PLAIN_TEMPLATE, default_template, looks_instruct

    base = {"general.name": "Gemma 3 270m", "general.tags": "['gemma3', 'gemma', 'google', 'text-generation']"}
    tuned = [{"general.finetune": "it"}, {"general.name": "Qwen2.5 7B Instruct"}, {"general.basename": "chat-model"},
             {"general.name": "gemma-3-270m-it"}]
    assert not looks_instruct(base) and not looks_instruct({"general.name": "Italian BERT"})
    assert all(looks_instruct(m) for m in tuned)
    has = {"<start_of_turn>"}.__contains__
    assert default_template("gemma3", has, instruct=True)[0] == GEMMA_TEMPLATE
    assert default_template("gemma3", has, instruct=False) == (PLAIN_TEMPLATE, ["\nUser:"])
