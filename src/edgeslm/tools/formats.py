"""Native tool-call formats: how each model family is shown tools, writes calls, and reads results.

A :class:`ToolFormat` does three things for one family:

* ``prepare`` turns an OpenAI-style conversation (with ``tools``, assistant ``tool_calls`` and
  ``role: "tool"`` messages) into plain ``{role, content}`` messages for the model's own chat
  template. Markup the template would write itself (``<tool_call>``, ``<|tool|>``...) is wrapped
  with :class:`Markup`, so it alone is parsed for control tokens: tool results and arguments stay
  plain text.
* ``grammar`` builds the llguidance Lark grammar of a reply made of calls in the family's own syntax
  (``tool_choice="required"`` or a named function), each call's name one of the tools and its
  arguments constrained by that tool's JSON Schema (``%json{...}``). In ``auto`` the reply is free
  text until it commits to a call in any of the forms small models use (their own tags, bare or
  fenced JSON, JSON lists, Python-style calls: :mod:`edgeslm.tools.calls`); ``detector`` finds that
  point and :func:`~edgeslm.tools.calls.call_grammar` constrains the rest.
* ``parse`` reads the text before the calls and the calls from a reply.

Formats (``tool_format``): ``generic`` (``{"tool_calls": [...]}``), ``hermes`` (Qwen 2.5,
``<tool_call>`` blocks), ``phi4`` (``<|tool_call|>[...]<|/tool_call|>``), ``llama3``
(``{"name": .., "parameters": ..}``, ``ipython`` results) and ``gemma3`` (a JSON list of calls).
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ToolCallError
from .calls import MAX_PARALLEL, CallDetector, read_calls


@functools.lru_cache(maxsize=128)
def _detector(name_keys: tuple[str, ...], py_names: tuple[str, ...]) -> CallDetector:
    return CallDetector(name_keys, py_names)

__all__ = ["FORMATS", "Markup", "ToolFormat", "detect_tool_format", "get_format"]

Message = dict[str, Any]


class Markup:
    """Wraps template-authored text placed inside message contents, so that only it is parsed for
    control tokens (a random nonce per render: message text cannot forge the markers)."""

    def __init__(self) -> None:
        nonce = secrets.token_hex(6)
        self.open = f"\ue000{nonce}\ue001"
        self.close = f"\ue002{nonce}\ue003"
        self._re = re.compile(re.escape(self.open) + "(.*?)" + re.escape(self.close), re.DOTALL)

    def __call__(self, text: str) -> str:
        return f"{self.open}{text}{self.close}" if text else ""

    def unmarked(self, text: str) -> str:
        """*text* without its marked spans (what must stay plain)."""
        return self._re.sub("", text)

    def plain(self, text: str) -> str:
        """*text* with the markers removed (the spans kept)."""
        return self._re.sub(lambda m: m.group(1), text)

    def split(self, segments: Sequence[tuple[str, bool]]) -> list[tuple[str, bool]]:
        """Split rendered segments: marked spans become control-token-parsed segments."""
        out: list[tuple[str, bool]] = []
        for text, special in segments:
            pos = 0
            for m in self._re.finditer(text):
                if m.start() > pos:
                    out.append((text[pos : m.start()], special))
                out.append((m.group(1), True))
                pos = m.end()
            if pos < len(text):
                out.append((text[pos:], special))
        return out


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _lark_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)



@dataclass(frozen=True)
class ToolFormat:
    """The generic format; subclasses override the prompt wording and markup."""

    name: str = "generic"
    block_open: str = '{"tool_calls": ['
    block_close: str = "]}"
    call_open: str = ""
    call_close: str = ""
    sep: str = ", "
    args_key: str = "arguments"
    specials: tuple[str, ...] = ()  # markup that is one control token in the family's vocabulary
    #: Keys that may name the tool first in a bare JSON call (``{"name": ...``).
    name_keys: tuple[str, ...] = ("name", "function", "tool")

    # ------------------------------------------------------------------ prompt
    def instructions(self, tools: Sequence[Any]) -> str:
        listing = "\n".join(_dumps(t.spec()) for t in tools)
        return (
            "You can call these tools (their arguments are described by JSON Schema):\n"
            f"{listing}\n\n"
            'To call tools, reply with only this JSON: {"tool_calls": [{"name": "<tool name>", '
            '"arguments": {<arguments>}}]}\nOtherwise, answer in plain text.'
        )

    def system_with_tools(self, system: str | None, tools: Sequence[Any], mark: Markup) -> str:
        base = system if system else "You are a helpful assistant."
        return f"{base}\n\n{self.instructions(tools)}"

    def call_json(self, name: str, arguments: Any) -> str:
        return _dumps({"name": name, self.args_key: arguments})

    def render_calls(self, calls: Sequence[tuple[str, Any]], mark: Markup) -> str:
        """The reply text for *calls* (``(name, arguments)``), exactly as the grammar writes it."""
        body = self.sep.join(
            self._marked(self.call_open, mark) + self.call_json(n, a) + self._marked(self.call_close, mark)
            for n, a in calls
        )
        return self._marked(self.block_open, mark) + body + self._marked(self.block_close, mark)

    def _split_specials(self, text: str) -> list[str]:
        if not self.specials:
            return [text]
        return [p for p in re.split("(" + "|".join(re.escape(s) for s in self.specials) + ")", text) if p]

    def _marked(self, text: str, mark: Markup) -> str:
        return "".join(mark(p) if p in self.specials else p for p in self._split_specials(text))

    def result_message(self, name: str, content: str, mark: Markup) -> Message:
        # generic: the model's own template decides how a "tool" turn looks (ChatML: <|im_start|>tool)
        return {"role": "tool", "content": content}

    def merge_results(self, msgs: list[Message]) -> list[Message]:
        return msgs

    def prepare(self, messages: Sequence[Message], tools: Sequence[Any], mark: Markup) -> list[Message]:
        """Plain ``{role, content}`` messages carrying the tools, calls and results in this format."""
        out: list[Message] = []
        names: dict[str, str] = {}
        pending: list[Message] = []

        def flush() -> None:
            if pending:
                out.extend(self.merge_results(list(pending)))
                pending.clear()

        for i, m in enumerate(messages):
            role = m.get("role")
            if role == "tool" or role == "ipython" or role == "function":
                call_id = m.get("tool_call_id")
                name = m.get("name") or (names.get(call_id) if call_id else None) or "tool"
                pending.append(self.result_message(str(name), _content(m, i), mark))
                continue
            flush()
            if role == "assistant" and m.get("tool_calls"):
                calls = []
                for c in m["tool_calls"]:
                    fn = c.get("function", c) if isinstance(c, dict) else {}
                    args = fn.get("arguments", {})
                    if isinstance(args, str):
                        try:
                            args = json.loads(args) if args.strip() else {}
                        except ValueError:
                            raise ToolCallError(
                                f"messages[{i}]: the arguments of tool call {fn.get('name')!r} are not JSON",
                                hint="pass arguments as a dict or a JSON string",
                            ) from None
                    if c.get("id"):
                        names[c["id"]] = fn.get("name", "")
                    calls.append((str(fn.get("name", "")), args))
                text = _content(m, i)
                rendered = self.render_calls(calls, mark)
                out.append({"role": "assistant", "content": f"{text}\n{rendered}" if text else rendered})
                continue
            out.append({"role": role, "content": _content(m, i)})
        flush()
        if tools:
            out = self.add_tools(out, tools, mark)
        return out

    def add_tools(self, msgs: list[Message], tools: Sequence[Any], mark: Markup) -> list[Message]:
        if msgs and msgs[0]["role"] == "system":
            return [{"role": "system", "content": self.system_with_tools(msgs[0]["content"], tools, mark)}, *msgs[1:]]
        return [{"role": "system", "content": self.system_with_tools(None, tools, mark)}, *msgs]

    # ------------------------------------------------------------------ grammar
    def grammar(
        self,
        tools: Sequence[tuple[str, dict[str, Any]]],
        *,
        parallel: bool,
        special_ids: dict[str, int],
    ) -> str:
        """Lark grammar for a reply made of calls only, in this format's own syntax (``required``
        or a named function). *tools*: ``(name, llguidance JSON schema)``."""

        def lit(text: str) -> str:
            parts = self._split_specials(text)
            return " ".join(f"<[{special_ids[p]}]>" if p in special_ids else _lark_str(p) for p in parts if p) or '""'

        lines = ["start: calls"]
        more = f" ({lit(self.sep)} call){{0,{MAX_PARALLEL - 1}}}" if parallel else ""
        lines.append(f"calls: {lit(self.block_open) if self.block_open else ''} call{more} "
                     f"{lit(self.block_close) if self.block_close else ''}".rstrip())
        lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
        for i, (name, schema) in enumerate(tools):
            head = self.call_json(name, 0)[:-2]  # '{"name": "f", "arguments": '
            pieces = [lit(self.call_open) if self.call_open else "", _lark_str(head), f"args_{i}", _lark_str("}"),
                      lit(self.call_close) if self.call_close else ""]
            lines.append(f"call_{i}: " + " ".join(p for p in pieces if p))
            lines.append(f"args_{i}: %json {json.dumps(schema, ensure_ascii=False)}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ finding and reading calls
    def detector(self, py_names: Sequence[str] = ()) -> CallDetector:
        """What commits an ``auto`` reply to a call; *py_names*: the tools (they may be called
        Python-style, ``[name(arg=value)]``). Kept per name keys and tool names: building one
        compiles its patterns (33 ms a question in the BFCL bench)."""
        return _detector(tuple(self.name_keys), tuple(sorted(set(py_names))))

    def find_call(self, text: str, names: Sequence[str] = ()) -> int:
        """Where the first call begins in *text* (the tools *names* may be called Python-style), or -1."""
        at = self.detector(names).search(text)
        return -1 if at is None else at

    def read(self, text: str, start: int) -> list[tuple[str, dict[str, Any]]]:
        """The calls written in *text* from *start*; raises :class:`ToolCallError` on malformed ones."""
        try:
            return read_calls(text, start, self.name_keys)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ToolCallError(
                f"malformed {self.name} tool call: {exc}: {text[start:start + 200]!r}",
                hint="this reply was not produced under the tool grammar",
            ) from None

    def parse(self, text: str, names: Sequence[str] = ()) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
        """``(text before the calls, [(name, arguments)])`` from a reply; raises :class:`ToolCallError`
        on malformed calls. *names*: the tools, which may also be called Python-style."""
        at = self.find_call(text, names)
        if at < 0:
            return text, []
        return text[:at].strip(), self.read(text, at)


def _content(m: Message, i: int) -> str:
    c = m.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    try:
        return json.dumps(c, ensure_ascii=False)
    except (TypeError, ValueError):
        raise TypeError(f"messages[{i}]['content'] must be a string") from None


@dataclass(frozen=True)
class HermesFormat(ToolFormat):
    """Qwen 2.5 / Hermes: ``<tools>`` in the system turn, ``<tool_call>`` blocks, ``<tool_response>`` results."""

    name: str = "hermes"
    block_open: str = ""
    block_close: str = ""
    call_open: str = "<tool_call>\n"
    call_close: str = "\n</tool_call>"
    sep: str = "\n"
    name_keys: tuple[str, ...] = ("name",)
    specials: tuple[str, ...] = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

    def system_with_tools(self, system: str | None, tools: Sequence[Any], mark: Markup) -> str:
        base = system if system else "You are a helpful assistant."
        listing = "\n".join(_dumps(t.to_openai()) for t in tools)
        return (
            f"{base}\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listing}\n"
            "</tools>\n\nFor each function call, return a json object with function name and arguments within "
            f"{mark('<tool_call>')}{mark('</tool_call>')} XML tags:\n{mark('<tool_call>')}\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n' + mark("</tool_call>")
        )

    def result_message(self, name: str, content: str, mark: Markup) -> Message:
        return {"role": "user", "content": f"{mark('<tool_response>')}\n{content}\n{mark('</tool_response>')}"}

    def merge_results(self, msgs: list[Message]) -> list[Message]:
        return [{"role": "user", "content": "\n".join(m["content"] for m in msgs)}]


@dataclass(frozen=True)
class Phi4Format(ToolFormat):
    """Phi-4-mini: ``<|tool|>[tools]<|/tool|>`` in the system turn, ``<|tool_call|>[calls]<|/tool_call|>``."""

    name: str = "phi4"
    block_open: str = "<|tool_call|>["
    block_close: str = "]<|/tool_call|>"
    name_keys: tuple[str, ...] = ("name",)
    specials: tuple[str, ...] = ("<|tool|>", "<|/tool|>", "<|tool_call|>", "<|/tool_call|>")

    def system_with_tools(self, system: str | None, tools: Sequence[Any], mark: Markup) -> str:
        base = system if system else "You are a helpful assistant with some tools."
        return f"{base}{mark('<|tool|>')}{_dumps([t.spec() for t in tools])}{mark('<|/tool|>')}"

    def result_message(self, name: str, content: str, mark: Markup) -> Message:
        return {"role": "tool", "content": content}


@dataclass(frozen=True)
class Llama3Format(ToolFormat):
    """Llama 3.x JSON tool calling: tools listed in the first user turn, ``{"name", "parameters"}``
    replies (parallel calls separated by ``; ``), results in the ``ipython`` role."""

    name: str = "llama3"
    block_open: str = ""
    block_close: str = ""
    sep: str = "; "
    args_key: str = "parameters"
    name_keys: tuple[str, ...] = ("name",)

    def add_tools(self, msgs: list[Message], tools: Sequence[Any], mark: Markup) -> list[Message]:
        listing = "\n\n".join(json.dumps(t.to_openai(), indent=4, ensure_ascii=False) for t in tools)
        prefix = (
            "Given the following functions, please respond with a JSON for a function call with its proper "
            "arguments that best answers the given prompt.\n\nRespond in the format "
            '{"name": function name, "parameters": dictionary of argument name and its value}. '
            f"Do not use variables.\n\n{listing}\n\n"
        )
        out = list(msgs)
        for i, m in enumerate(out):
            if m["role"] == "user":
                out[i] = {"role": "user", "content": prefix + m["content"]}
                return out
        return [*out, {"role": "user", "content": prefix.rstrip()}]

    def result_message(self, name: str, content: str, mark: Markup) -> Message:
        return {"role": "ipython", "content": content}


@dataclass(frozen=True)
class Gemma3Format(ToolFormat):
    """Gemma 3 (no tool tokens): functions described in the prompt, calls as a JSON list,
    results as a ```` ```tool_output ```` block in a user turn.

    The prompt asks for the JSON list, which ``required`` writes. In ``auto``, Gemma's other reply
    forms, Python-style ``[get_weather(city="Paris")]`` or a ```` ```tool_code ```` block, are caught
    and constrained too (argument values are written as JSON).
    """

    name: str = "gemma3"
    block_open: str = "["
    block_close: str = "]"
    name_keys: tuple[str, ...] = ("name",)

    def system_with_tools(self, system: str | None, tools: Sequence[Any], mark: Markup) -> str:
        listing = "\n".join(_dumps(t.spec()) for t in tools)
        head = f"{system}\n\n" if system else ""
        return (
            f"{head}You have access to functions. If you decide to invoke any of the function(s), you MUST put "
            'it in the JSON format of [{"name": function name, "arguments": dictionary of argument name and its '
            'value}, ...]\nYou SHOULD NOT include any other text in the response if you call a function.\n'
            f"{listing}"
        )

    def result_message(self, name: str, content: str, mark: Markup) -> Message:
        return {"role": "user", "content": f"```tool_output\n{content}\n```"}

    def merge_results(self, msgs: list[Message]) -> list[Message]:
        return [{"role": "user", "content": "\n".join(m["content"] for m in msgs)}]


FORMATS: dict[str, ToolFormat] = {
    f.name: f for f in (ToolFormat(), HermesFormat(), Phi4Format(), Llama3Format(), Gemma3Format())
}


def get_format(name: str | ToolFormat) -> ToolFormat:
    """The :class:`ToolFormat` called *name* (or *name* itself when it is one)."""
    if isinstance(name, ToolFormat):
        return name
    fmt = FORMATS.get(str(name).lower())
    if fmt is None:
        raise ToolCallError(f"unknown tool format {name!r}", hint=f"use one of {sorted(FORMATS)}")
    return fmt


def detect_tool_format(template: str | None, has_token: Callable[[str], bool], architecture: str = "") -> str:
    """Guess the format from the chat template and vocabulary (for models not in the catalog)."""
    src = template or ""
    if "<|tool_call|>" in src or has_token("<|tool_call|>"):
        return "phi4"
    if "<tool_call>" in src or has_token("<tool_call>"):
        return "hermes"
    if "<|python_tag|>" in src or "ipython" in src or has_token("<|python_tag|>"):
        return "llama3"
    if architecture.startswith("gemma3") and "<start_of_turn>" in src:
        return "gemma3"
    return "generic"
