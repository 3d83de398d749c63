"""Native tool formats: prompt rendering (golden strings), parsing, and grammar/render agreement."""

from __future__ import annotations

import json

import pytest

import edgeslm
from edgeslm.decoding.template import CHATML_TEMPLATE, ChatTemplate
from edgeslm.tools import as_tools, detect_tool_format, get_format
from edgeslm.tools.formats import FORMATS, Markup
from tests.fakes import TEMPLATES


def weather(city: str) -> str:
    """Get the weather.

    Args:
        city: City name.
    """
    return "sunny"


CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "<|im_end|>sunny"},
]

# What follows the instructions: the user turn, the call in the native syntax, the result, the next turn.
GOLDEN = {
    "generic": 'Weather in Paris?<|im_end|>\n<|im_start|>assistant\n{"tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}]}<|im_end|>\n<|im_start|>tool\n<|im_end|>sunny<|im_end|>\n<|im_start|>assistant\n',  # noqa: E501
    "hermes": 'Weather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n<|im_end|>sunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n',  # noqa: E501
    "phi4": 'Weather in Paris?<|end|><|assistant|><|tool_call|>[{"name": "weather", "arguments": {"city": "Paris"}}]<|/tool_call|><|end|><|tool|><|im_end|>sunny<|end|><|assistant|>',  # noqa: E501
    "llama3": 'Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{"name": "weather", "parameters": {"city": "Paris"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n<|im_end|>sunny<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',  # noqa: E501
    "gemma3": 'Weather in Paris?<end_of_turn>\n<start_of_turn>model\n[{"name": "weather", "arguments": {"city": "Paris"}}]<end_of_turn>\n<start_of_turn>user\n```tool_output\n<|im_end|>sunny\n```<end_of_turn>\n<start_of_turn>model\n',  # noqa: E501
}
HEADS = {
    "generic": '<|im_start|>system\nYou are a helpful assistant.\n\nYou can call these tools (their arguments are described by JSON Schema):\n{"name": "weather", "description": "Get the weather.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name."}}, "required": ["city"]}}\n\nTo call tools, reply with only this JSON: {"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}\nOtherwise, answer in plain text.<|im_end|>\n<|im_start|>user\n',  # noqa: E501
    "hermes": '<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{"type": "function", "function": {"name": "weather", "description": "Get the weather.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name."}}, "required": ["city"]}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\n',  # noqa: E501
    "phi4": '<|system|>You are a helpful assistant with some tools.<|tool|>[{"name": "weather", "description": "Get the weather.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name."}}, "required": ["city"]}}]<|/tool|><|end|><|user|>',  # noqa: E501
    "llama3": '<s><|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.\n\n{\n    "type": "function",\n',  # noqa: E501
    "gemma3": '<s><start_of_turn>user\nYou have access to functions. If you decide to invoke any of the function(s), you MUST put it in the JSON format of [{"name": function name, "arguments": dictionary of argument name and its value}, ...]\nYou SHOULD NOT include any other text in the response if you call a function.\n{"name": "weather", "description": "Get the weather.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name."}}, "required": ["city"]}}\n\n',  # noqa: E501
}


def _render(name: str, messages: list[dict], tools: list) -> list[tuple[str, bool]]:
    mark = Markup()
    t = ChatTemplate(TEMPLATES[name], bos_token="<s>")
    return mark.split(t.render(get_format(name).prepare(messages, as_tools(tools), mark),
                               is_special_text=lambda s: "<|" in s))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_rendering_golden(name: str) -> None:
    segs = _render(name, CONVERSATION, [weather])
    text = "".join(s for s, _ in segs)
    assert text.startswith(HEADS[name])
    assert text.endswith(GOLDEN[name])
    # the tool's result is never parsed for control tokens; the format's own markup is
    (result,) = [(s, sp) for s, sp in segs if "sunny" in s]
    assert "<|im_end|>sunny" in result[0] and result[1] is False
    fmt = get_format(name)
    for special in fmt.specials:
        for s, sp in segs:
            if special in s and "sunny" not in s and "Weather" not in s:
                assert sp, (special, s)


def test_results_of_parallel_calls_are_merged_where_the_family_does() -> None:
    msgs = [*CONVERSATION, {"role": "tool", "name": "weather", "content": "rainy"}]
    text = "".join(s for s, _ in _render("hermes", msgs, [weather]))
    assert "<tool_response>\n<|im_end|>sunny\n</tool_response>\n<tool_response>\nrainy\n</tool_response>" in text
    text = "".join(s for s, _ in _render("llama3", msgs, [weather]))
    assert text.count("ipython") == 2


REPLIES = {
    "generic": ('{"tool_calls": [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]}', ""),
    "hermes": ('Sure.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n'
               '{"name": "b", "arguments": {}}\n</tool_call>', "Sure."),
    "phi4": ('Let me see.<|tool_call|>[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]'
             '<|/tool_call|>', "Let me see."),
    "llama3": ('{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}', ""),
    "gemma3": ('[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]', ""),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_parse_golden(name: str) -> None:
    fmt = get_format(name)
    reply, content = REPLIES[name]
    assert fmt.parse(reply) == (content, [("a", {"x": 1}), ("b", {})])
    assert fmt.parse("Just text, no call.") == ("Just text, no call.", [])
    # what render_calls writes is what parse reads
    mark = Markup()
    rendered = mark.plain(fmt.render_calls([("a", {"x": 1}), ("b", {})], mark))
    assert fmt.parse(rendered)[1] == [("a", {"x": 1}), ("b", {})]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_parse_rejects_malformed_calls(name: str) -> None:
    fmt = get_format(name)
    reply = REPLIES[name][0]
    broken = reply.replace('"x": 1}', '"x": 1')
    with pytest.raises(edgeslm.ToolCallError) as e:
        fmt.parse(broken)
    assert e.value.hint


def test_detect_tool_format() -> None:
    def none(t: str) -> bool:
        return False

    assert detect_tool_format("{{ '<tool_call>' }}", none) == "hermes"
    assert detect_tool_format("x", lambda t: t == "<|tool_call|>") == "phi4"
    assert detect_tool_format("{% if message.role == 'ipython' %}", none) == "llama3"
    assert detect_tool_format("<start_of_turn>", none, "gemma3") == "gemma3"
    assert detect_tool_format(CHATML_TEMPLATE, none) == "generic"
    with pytest.raises(edgeslm.ToolCallError, match="unknown tool format"):
        get_format("klingon")


# ------------------------------------------------------------------ grammars, with a real tokenizer


def _matcher(model: edgeslm.Model, grammar: str):
    import llguidance

    m = llguidance.LLMatcher(model._engine.constraint_tokenizer(), grammar, log_level=0)
    assert not m.is_error(), m.get_error()
    return m


def _accepts(model: edgeslm.Model, grammar: str, text: str) -> bool:
    m = _matcher(model, grammar)
    return bool(m.consume_tokens(model.tokenize(text))) and bool(m.is_accepting())


def add(a: int, b: int = 0) -> int:
    """Add."""
    return a + b


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_grammar_accepts_rendered_calls_only(smollm2: edgeslm.Model, name: str) -> None:
    from edgeslm.api.tool_use import plan_tools

    fmt = get_format(name)
    plan = plan_tools([weather, add], "auto", True, fmt)
    engine = smollm2._engine
    native, lazy = plan.grammar(engine), plan.call_grammar(engine)
    mark = Markup()
    good = mark.plain(fmt.render_calls([("weather", {"city": "Oslo"}), ("add", {"a": 1, "b": 2})], mark))
    assert _accepts(smollm2, native, good) and _accepts(smollm2, lazy, good)
    assert not _accepts(smollm2, native, "It is sunny.") and not _accepts(smollm2, lazy, "It is sunny.")
    for bad in (("wether", {"city": "Oslo"}), ("add", {"a": "1"}), ("add", {"b": 1}), ("add", {"a": 1, "c": 2})):
        text = mark.plain(fmt.render_calls([bad], mark))
        assert not _accepts(smollm2, native, text) and not _accepts(smollm2, lazy, text), text
    single = plan_tools([weather, add], "auto", False, fmt)
    assert not _accepts(smollm2, single.grammar(engine), good)
    assert not _accepts(smollm2, single.call_grammar(engine), good)
    named = plan_tools([weather, add], {"type": "function", "function": {"name": "add"}}, True, fmt)
    g = named.grammar(engine)
    assert _accepts(smollm2, g, mark.plain(fmt.render_calls([("add", {"a": 1})], mark)))
    assert not _accepts(smollm2, g, mark.plain(fmt.render_calls([("weather", {"city": "x"})], mark)))
    json.loads(json.dumps(plan.schemas["add"].grammar_schema))  # plain JSON


def test_call_grammar_takes_every_form_and_only_valid_calls(smollm2: edgeslm.Model) -> None:
    from edgeslm.api.tool_use import plan_tools

    g = plan_tools([weather, add], "auto", True, get_format("hermes")).call_grammar(smollm2._engine)
    for text in ('{"name": "weather", "arguments": {"city": "Oslo"}}',
                 '{ "name" : "add", "parameters": {"a": 1}}',
                 '{"type": "function", "name": "add", "parameters": {"a": 1, "b": 2}}',
                 '```json\n[{"name": "add", "arguments": {"a": 1}}, '
                 '{"name": "weather", "arguments": {"city": "x"}}]\n```',
                 '<tool_call>\n[{"name": "add", "arguments": {"a": 1}}]\n</tool_call>',
                 '<|tool_call|>[{"name": "add", "arguments": {"a": 1}}]<|/tool_call|>',
                 '<|python_tag|>add(a=1, b=2)', '[weather(city="Oslo"), add(a=3)]', '```tool_code\nadd(a=1)\n```',
                 'functools[{"name": "add", "arguments": {"a": 1}}]',
                 '{"tool_calls": [{"name": "add", "arguments": {"a": 1}}]}'):
        assert _accepts(smollm2, g, text), text
    for text in ('<tool_call>{"name": "weather", "arguments": {"city": 1}}</tool_call>',  # wrong type
                 '[add(b=1)]', "[add(a='1')]", '[nope(a=1)]', '{"name": "nope", "arguments": {}}',
                 '{"name": "add", "arguments": {"a": 1}} and more text'):
        assert not _accepts(smollm2, g, text), text


# Text that commits to a call (with its index), whatever the format: the call is caught there.
CAUGHT = [
    ('Sure. {"name": "nope"', 6), ('ok\n{\n  "name": "nope", "parameters": {}}', 3), ('x [ {\n"name": "nope"}]', 2),
    ('Calling now:\n```json\n{"name":', 13), ('see <tool_call>{"name"', 4), ("a <|tool_call|>[", 2),
    ('<|python_tag|>{"name"', 0), ('functools[{"name": "x"}]', 0), ('a {"tool_calls": [', 2),
    ('{"type": "function", "name": "weather"', 0), ('Sure: [weather(city="Oslo")]', 6),
    ('```tool_code\nweather(city="Oslo")\n```', 0), ('``` \n[ weather (', 0),
]
# Text that merely has braces, brackets, parentheses or code stays text in every format.
HARMLESS = ["It is sunny.", "", "Use {x} or [1, 2] here.", 'JSON like {"city": "Oslo"} is fine.',
            "See [the docs](https://x.org) and f(x).", "a [f(x) for x in y]\nend", "tool_calls: name",
            "[nope(city='Oslo')]", "```python\nprint(weather)\n```", '{"name" is a key}', "weather(city) is a tool",
            '{"function": "weather"}']


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_detector(name: str) -> None:
    fmt = get_format(name)
    detector = fmt.detector(["weather", "add"])
    for text, at in CAUGHT:
        assert detector.search(text) == at == fmt.find_call(text, ["weather"]), text
        assert detector.hold(text[: at + 1]) == at  # a stream holds back from where a call may begin
    for text in HARMLESS:
        if name == "generic" and text.startswith('{"function"'):
            continue  # the generic format also takes {"function": ...} and {"tool": ...}
        assert detector.search(text) is None, text
        assert fmt.parse(text, ["weather"]) == (text, [])
    assert detector.hold("It is sunny.") == len("It is sunny.")
    assert detector.hold("Look: ```js") == 6 and detector.hold('a {"na') == 2 and detector.hold('a {"x"') == 6
    # a call in text is read back from where it begins
    assert fmt.parse('Sure: [weather(city="Oslo"), add(a=1)]', ["weather", "add"]) == (
        "Sure:", [("weather", {"city": "Oslo"}), ("add", {"a": 1})])
    with pytest.raises(edgeslm.ToolCallError, match=f"malformed {name} tool call") as e:
        fmt.parse("[weather(city='Oslo')]", ["weather"])  # Python strings: never produced under the grammar
    assert e.value.hint


def test_generic_format_takes_other_name_keys() -> None:
    fmt = get_format("generic")
    assert fmt.parse('{"function": "weather", "arguments": {"city": "x"}}') == ("", [("weather", {"city": "x"})])
    assert fmt.parse('{"tool": "weather"}') == ("", [("weather", {})])
    assert get_format("hermes").parse('{"function": "weather"}') == ('{"function": "weather"}', [])


def test_a_text_answer_holding_a_call_is_an_error() -> None:
    from edgeslm.api.tool_use import _check_text, plan_tools

    plan = plan_tools([weather], "auto", True, get_format("gemma3"))
    _check_text(plan, "It is sunny [1, 2].")
    with pytest.raises(edgeslm.ToolCallError, match="inside its text") as e:
        _check_text(plan, 'ok {"name": "nope", "parameters": {}}')
    assert e.value.hint
