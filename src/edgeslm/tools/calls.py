"""Catching tool calls in free text: triggers, the grammar that takes over, and the reader.

In ``auto`` mode the reply is decoded freely until it commits to a call, the way llama.cpp's "lazy"
grammars work. A call is recognised however the model starts it:

* a native opening tag: ``<tool_call>`` (Hermes / Qwen), ``<|tool_call|>`` (Phi-4-mini),
  ``<|python_tag|>`` (Llama 3.1), ``functools[`` (Phi-4-mini's other form);
* a bare JSON object whose first key names the tool (``{"name": ...``; the ``generic`` format also
  takes ``"function"`` and ``"tool"``), or Llama 3's ``{"type": "function", ...``;
* ``{"tool_calls": ...`` (the ``generic`` format's own);
* either of these inside a JSON list ``[{"name": ...`` (Gemma 3, Phi-4-mini) or a fenced block
  (```` ```json ````), and Python-style calls of a tool, ``[get_weather(city="Paris")]`` or
  ```` ```tool_code ```` (Gemma 3, Llama 3.2).

:class:`CallDetector` finds the first such *trigger* in the text. From that point
:func:`call_grammar` constrains the rest of the reply: the tool name is one of the tools, its
arguments follow that tool's JSON Schema (``%json``), and wrappers close properly. Text that only
mentions braces, brackets or code (``{x}``, ``[1, 2]``, ``{"city": "Oslo"}``) never triggers.
:func:`read_calls` reads the calls back from where the trigger began.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CLOSE_TAGS", "MAX_PARALLEL", "TAGS", "CallDetector", "call_grammar", "py_callable", "read_calls"]

#: Most calls one reply may hold when parallel calls are allowed (bounds a looping model).
MAX_PARALLEL = 8
#: Longest run of whitespace the call syntax allows between two of its pieces.
MAX_WS = 16
_WSC = "[ \\t\\r\\n]"
#: Tags that open a call in some family's native format (the text of the token, where it is one).
TAGS = ("<tool_call>", "<|tool_call|>", "<|python_tag|>")
CLOSE_TAGS = ("</tool_call>", "<|/tool_call|>")
#: A tool name that can be written as a Python call (``[name(arg=value)]``).
_PY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ------------------------------------------------------------------------------------------- triggers
#
# Triggers are written with a few combinators so that each yields two regexes: the trigger itself,
# and one matching every *prefix* of a trigger (text to hold back from a stream until it is clear
# whether a call starts there).


class _Rx:
    def full(self) -> str:
        raise NotImplementedError

    def prefix(self) -> str:
        """A regex matching every prefix (the empty one included) of what :meth:`full` matches."""
        raise NotImplementedError


@dataclass(frozen=True)
class _Lit(_Rx):
    text: str

    def full(self) -> str:
        return re.escape(self.text)

    def prefix(self) -> str:
        out = ""
        for ch in reversed(self.text):
            out = f"(?:{re.escape(ch)}{out})?"
        return out


@dataclass(frozen=True)
class _Run(_Rx):
    """A character class repeated *lo* to *hi* times."""

    cls: str
    lo: int
    hi: int

    def full(self) -> str:
        return f"{self.cls}{{{self.lo},{self.hi}}}"

    def prefix(self) -> str:
        return f"{self.cls}{{0,{self.hi}}}"


@dataclass(frozen=True)
class _Seq(_Rx):
    parts: tuple[_Rx, ...]

    def full(self) -> str:
        return "".join(p.full() for p in self.parts)

    def prefix(self) -> str:
        # P(ab...) = P(a) | a P(b...)
        alts = []
        done = ""
        for p in self.parts:
            alts.append(done + p.prefix())
            done += p.full()
        return "(?:" + "|".join(alts) + ")"


@dataclass(frozen=True)
class _Alt(_Rx):
    options: tuple[_Rx, ...]

    def full(self) -> str:
        return "(?:" + "|".join(o.full() for o in self.options) + ")"

    def prefix(self) -> str:
        return "(?:" + "|".join(o.prefix() for o in self.options) + ")"


@dataclass(frozen=True)
class _Opt(_Rx):
    inner: _Rx

    def full(self) -> str:
        return f"(?:{self.inner.full()})?"

    def prefix(self) -> str:
        return self.inner.prefix()


def _seq(*parts: _Rx | str) -> _Seq:
    return _Seq(tuple(_Lit(p) if isinstance(p, str) else p for p in parts))


_W = _Run(_WSC, 0, MAX_WS)


def py_callable(name: str) -> bool:
    """Whether a tool name can be written as a Python-style call."""
    return _PY_NAME.fullmatch(name) is not None


class CallDetector:
    """Finds where a reply commits to a tool call (see the module docstring).

    *name_keys*: keys that may name the tool first in a JSON call (``("name",)``); *py_names*: tools
    that may be called Python-style (only inside ``[...]``, a code fence or after ``<|python_tag|>``).
    """

    def __init__(self, name_keys: Sequence[str] = ("name",), py_names: Sequence[str] = ()) -> None:
        keys = _Alt(tuple(_Lit(f'"{k}"') for k in name_keys))
        json_head = _Alt((
            _seq("{", _W, keys, _W, ":"),
            _seq("{", _W, '"type"', _W, ":", _W, '"function"'),
        ))
        heads: list[_Rx] = [json_head]
        names = sorted({n for n in py_names if py_callable(n)}, key=len, reverse=True)
        if names:
            heads.append(_seq(_Alt(tuple(_Lit(n) for n in names)), _Run("[ \\t]", 0, 4), "("))
        head = _Alt(tuple(heads))
        fence = _seq("```", _Run("[A-Za-z_]", 0, 16), _Run("[ \\t]", 0, 4), _Opt(_Lit("\r")), "\n", _W)
        listed = _seq("[", _W)
        triggers = _Alt((
            _seq(fence, _Opt(listed), head),
            *(_Lit(t) for t in TAGS),
            _seq("functools", _W, "["),
            _seq("{", _W, '"tool_calls"', _W, ":"),
            _seq(listed, head),
            json_head,
        ))
        self.pattern = re.compile(triggers.full())
        self._prefix = re.compile(triggers.prefix())
        starts = {"`", "<", "f", "[", "{"}
        self._starts = re.compile("[" + re.escape("".join(sorted(starts))) + "]")

    def search(self, text: str, pos: int = 0) -> int | None:
        """Index where the first complete trigger in ``text[pos:]`` begins, or ``None``."""
        m = self.pattern.search(text, pos)
        return m.start() if m else None

    def hold(self, text: str, pos: int = 0) -> int:
        """Index of the first position at or after *pos* from which the rest of *text* could still
        grow into a trigger (``len(text)`` when none): text before it is surely not part of a call."""
        for m in self._starts.finditer(text, pos):
            if self._prefix.fullmatch(text, m.start()):
                return m.start()
        return len(text)


# -------------------------------------------------------------------------------------------- grammar


def _lark(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _py_kwargs(i: int, schema: dict[str, Any]) -> tuple[list[str], str | None, bool] | None:
    """Rules for the keyword arguments of tool *i* written Python-style, the rule to use for them,
    and whether they may be empty; ``None`` when a required name is not an identifier."""
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = [k for k in schema.get("required", []) if k in props]
    if any(not _IDENT.fullmatch(k) for k in required) or len(required) != len(schema.get("required", [])):
        return None
    optional = [k for k in props if k not in required and _IDENT.fullmatch(k)]
    defs = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
    lines: list[str] = []
    kw: dict[str, str] = {}
    for n, key in enumerate([*required, *optional]):
        sub = props[key] if isinstance(props[key], dict) else {}
        sub = {**sub, **defs, "x-guidance": schema.get("x-guidance", {})}
        lines.append(f"kv_{i}_{n}: %json {json.dumps(sub, ensure_ascii=False)}")
        kw[key] = f"{_lark(key)} WS? \"=\" WS? kv_{i}_{n}"
    comma = '"," WS?'
    if required:
        body = f" WS? {comma} ".join(kw[k] for k in required)
        body += "".join(f" (WS? {comma} {kw[k]})?" for k in optional)
        lines.append(f"kw_{i}: {body}")
        return lines, f"kw_{i}", False
    if not optional:
        return lines, None, True
    alts = []
    for n, key in enumerate(optional):
        alts.append(kw[key] + "".join(f" (WS? {comma} {kw[k]})?" for k in optional[n + 1 :]))
    lines.append(f"kw_{i}: " + " | ".join(alts))
    return lines, f"kw_{i}", True


def call_grammar(
    tools: Sequence[tuple[str, dict[str, Any]]],
    *,
    name_keys: Sequence[str] = ("name",),
    special_ids: dict[str, int] | None = None,
    parallel: bool = True,
    pre: str = "",
) -> str:
    """Lark grammar for a reply from the point its calls begin (after the literal *pre*: text of
    the first call token that comes before the trigger). Every form :class:`CallDetector` triggers
    on is accepted; *tools* are ``(name, llguidance JSON schema)``."""
    special_ids = special_ids or {}
    more = MAX_PARALLEL - 1 if parallel else 0

    def rep(item: str, sep: str) -> str:
        return f"{item} ({sep} {item}){{0,{more}}}" if more else item

    def tag(text: str) -> str:
        if text in special_ids:
            return f"(<[{special_ids[text]}]> | {_lark(text)})"
        return _lark(text)

    lines = ["%llguidance {}", f"start: {_lark(pre)} form" if pre else "start: form"]
    comma = 'WS? "," WS?'
    forms = ["fence", "hermes", "phi4", "pytag", "tcalls", "functools", "jlist", "jobjs"]
    jel, pel = [], []
    for i, (name, schema) in enumerate(tools):
        must = bool(schema.get("required"))
        args = f'WS? "," WS? ARGKEY WS? ":" WS? args_{i}'
        lines.append(f'call_{i}: "{{" WS? (typehead WS? "," WS?)? NAMEKEY WS? ":" WS? {_lark(_lark(name))} '
                     f'{args if must else f"({args})?"} WS? "}}"')
        lines.append(f"args_{i}: %json {json.dumps(schema, ensure_ascii=False)}")
        jel.append(f"call_{i}")
        kwargs = _py_kwargs(i, schema) if py_callable(name) else None
        if kwargs is not None:
            rules, body, empty = kwargs
            lines.extend(rules)
            inner = "" if body is None else (f" ({body} WS?)?" if empty else f" {body} WS?")
            lines.append(f'py_{i}: {_lark(name)} /[ \\t]{{0,4}}/ "(" WS?{inner} ")"')
            pel.append(f"py_{i}")
    lines.append("jel: " + " | ".join(jel))
    lines.append(f'jlist: "[" WS? {rep("jel", comma)} WS? "]"')
    lines.append(f"jobjs: {rep('jel', 'SEP?')}")
    body = ["jlist", "jobjs"]
    if pel:
        forms += ["plist", "pyseq"]
        lines.append("pel: " + " | ".join(pel))
        lines.append(f'plist: "[" WS? {rep("pel", comma)} WS? "]"')
        lines.append(f"pyseq: {rep('pel', 'SEP?')}")
        body += ["plist", "pyseq"]
    lines += [
        f"form: {' | '.join(forms)}",
        f'fence: FENCE WS? ({" | ".join(body)}) (WS? "```")?',
        f"hermes: {rep('hblock', 'WS?')}",
        f'hblock: {tag("<tool_call>")} WS? (jel | jlist) WS? {tag("</tool_call>")}',
        f'phi4: {tag("<|tool_call|>")} WS? (jlist | jel) WS? {tag("<|/tool_call|>")}',
        f'pytag: {tag("<|python_tag|>")} WS? ({"jobjs | pyseq" if pel else "jobjs"})',
        'tcalls: "{" WS? "\\"tool_calls\\"" WS? ":" WS? jlist WS? "}"',
        'functools: "functools" WS? jlist',
        'typehead: "\\"type\\"" WS? ":" WS? "\\"function\\""',
        "NAMEKEY: /\"(" + "|".join(re.escape(k) for k in name_keys) + ")\"/",
        'ARGKEY: /"(arguments|parameters)"/',
        f"WS: /{_WSC}{{1,{MAX_WS}}}/",
        "SEP: /[ \\t\\r\\n]{1,4}[,;]?[ \\t\\r\\n]{0,4}|[,;][ \\t\\r\\n]{0,4}/",
        "FENCE: /```[A-Za-z_]{0,16}[ \\t]{0,4}\\r?\\n/",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- reading

_SKIP = re.compile(
    r"(?:[ \t\r\n,;\[\]]|```[A-Za-z_]*|functools|"
    + "|".join(re.escape(t) for t in (*TAGS, *CLOSE_TAGS))
    + ")*"
)
_DECODER = json.JSONDecoder()


def read_calls(text: str, start: int = 0, name_keys: Sequence[str] = ("name",)) -> list[tuple[str, dict[str, Any]]]:
    """The calls written from *start* on, in any form :func:`call_grammar` accepts.

    Raises ``ValueError`` on anything else (a broken object, text after the calls...)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    pos = start
    while True:
        pos = _SKIP.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text):
            break
        if text[pos] == "{":
            obj, pos = _DECODER.raw_decode(text, pos)
            items = obj.get("tool_calls") if isinstance(obj, dict) and "tool_calls" in obj else [obj]
            if not isinstance(items, list):
                raise ValueError("'tool_calls' must be a list")
            calls.extend(_json_call(o, name_keys) for o in items)
            continue
        m = _PY_NAME.match(text, pos)
        if m is None:
            raise ValueError(f"unexpected text after a call: {text[pos:pos + 20]!r}")
        call, pos = _py_call(text, m.group(0), m.end())
        calls.append(call)
    if not calls:
        raise ValueError("no call found")
    return calls


def _json_call(obj: Any, name_keys: Sequence[str]) -> tuple[str, dict[str, Any]]:
    if not isinstance(obj, dict):
        raise ValueError("a call must be a JSON object")
    name = next((obj[k] for k in name_keys if k in obj), None)
    if not isinstance(name, str):
        raise ValueError(f"a call must name its tool ({' / '.join(repr(k) for k in name_keys)})")
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, dict):
        raise ValueError("a call's arguments must be an object")
    return name, args


def _py_call(text: str, name: str, pos: int) -> tuple[tuple[str, dict[str, Any]], int]:
    def ws(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    pos = ws(pos)
    if not text.startswith("(", pos):
        raise ValueError(f"expected '(' after {name!r}")
    pos = ws(pos + 1)
    args: dict[str, Any] = {}
    while not text.startswith(")", pos):
        m = _IDENT.match(text, pos)
        if m is None:
            raise ValueError(f"expected an argument name in the call of {name!r}")
        pos = ws(m.end())
        if not text.startswith("=", pos):
            raise ValueError(f"expected '=' after {m.group(0)!r}")
        value, pos = _DECODER.raw_decode(text, ws(pos + 1))
        args[m.group(0)] = value
        pos = ws(pos)
        if text.startswith(",", pos):
            pos = ws(pos + 1)
        elif not text.startswith(")", pos):
            raise ValueError(f"expected ',' or ')' in the call of {name!r}")
    return (name, args), pos + 1
