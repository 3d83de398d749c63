"""Tools: a name, a description and a JSON Schema for the arguments, plus (optionally) the Python
function that runs them.

A tool comes from a plain function (type hints + docstring), the :func:`tool` decorator, or an
OpenAI tool dict. :func:`as_tools` accepts any mix of them. No pydantic is needed, except for
parameters whose type is a pydantic model (their schema and construction come from pydantic).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import re
import threading
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import ToolCallError

__all__ = ["Tool", "as_tools", "parse_docstring", "schema_from_function", "tool"]

_NAME_HINT = "give every tool a distinct name (tool(name=...) or the OpenAI dict's function.name)"


@dataclass
class Tool:
    """A tool the model may call. ``fn`` is ``None`` for tools given as OpenAI dicts."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    fn: Callable[..., Any] | None = field(default=None, repr=False)
    hints: dict[str, Any] = field(default_factory=dict, repr=False)  # parameter -> type, for conversion

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the Python function directly (a decorated function stays usable as a function)."""
        if self.fn is None:
            raise ToolCallError(f"tool {self.name!r} has no Python function", hint="pass the function itself")
        return self.fn(*args, **kwargs)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``{"type": "function", "function": {...}}`` dict."""
        return {"type": "function", "function": self.spec()}

    def spec(self) -> dict[str, Any]:
        """``{"name", "description", "parameters"}``, the shape most prompt formats list."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def invoke(self, arguments: Mapping[str, Any]) -> Any:
        """Run the function with JSON *arguments*: enums, dataclasses and pydantic models are built
        from their JSON form first. Arguments are expected to be validated already."""
        if self.fn is None:
            raise ToolCallError(
                f"tool {self.name!r} cannot be executed: it has no Python function",
                hint="pass Python functions (or @edgeslm.tool ones) to run_tools, or execute the calls yourself",
            )
        kwargs = {k: _convert(self.hints.get(k, Any), v) for k, v in arguments.items()}
        result = self.fn(**kwargs)
        if inspect.isawaitable(result):
            result = _run_awaitable(result)
        return result


def _run_awaitable(awaitable: Awaitable[Any]) -> Any:
    """Await *awaitable* to completion from synchronous code and return its result.

    With no event loop running in this thread, ``asyncio.run``. Inside a running loop (``run_tools``
    called from ``async`` code) ``asyncio.run`` would raise, and the caller's loop cannot be
    re-entered, so the awaitable runs in a fresh event loop on a worker thread while this thread
    waits for it. It must therefore not depend on the caller's loop (futures or locks made there)."""
    import asyncio

    async def _await() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop running in this thread
        return asyncio.run(_await())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_await())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="edgeslm-async-tool", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None
) -> Any:
    """Make a :class:`Tool` from a function: ``@edgeslm.tool`` or ``@edgeslm.tool(name=..., description=...)``.

    The returned tool is still callable like the function.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        t = _from_function(f, name=name, description=description)
        try:
            t.__doc__ = f.__doc__  # type: ignore[misc]
            t.__wrapped__ = f  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - dataclass instances accept attributes
            pass
        return t

    return wrap(fn) if fn is not None else wrap


def as_tools(tools: Any) -> list[Tool]:
    """Normalize a list of functions, :class:`Tool` objects and OpenAI tool dicts; names must be unique."""
    if tools is None:
        return []
    if isinstance(tools, (dict, Tool)) or callable(tools):
        tools = [tools]
    out: list[Tool] = []
    for i, t in enumerate(tools):
        if isinstance(t, Tool):
            out.append(t)
        elif isinstance(t, Mapping):
            out.append(_from_dict(t, i))
        elif callable(t):
            out.append(_from_function(t))
        else:
            raise ToolCallError(
                f"tools[{i}] is a {type(t).__name__}, not a tool",
                hint="pass Python functions, @edgeslm.tool functions, or OpenAI tool dicts "
                '({"type": "function", "function": {"name": ..., "parameters": {...}}})',
            )
    seen: set[str] = set()
    for t in out:
        if t.name in seen:
            raise ToolCallError(f"two tools are named {t.name!r}", hint=_NAME_HINT)
        seen.add(t.name)
    return out


def _from_dict(d: Mapping[str, Any], i: int) -> Tool:
    fn_spec = d.get("function") if d.get("type") == "function" or "function" in d else d
    if not isinstance(fn_spec, Mapping) or not isinstance(fn_spec.get("name"), str) or not fn_spec["name"]:
        raise ToolCallError(
            f"tools[{i}] has no function name",
            hint='use {"type": "function", "function": {"name": "...", "description": "...", "parameters": {...}}}',
        )
    params = fn_spec.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, Mapping):
        raise ToolCallError(f"tool {fn_spec['name']!r}: parameters must be a JSON Schema object",
                            hint='e.g. {"type": "object", "properties": {"city": {"type": "string"}}}')
    return Tool(str(fn_spec["name"]), str(fn_spec.get("description") or ""), json.loads(json.dumps(params)))


def _from_function(f: Callable[..., Any], *, name: str | None = None, description: str | None = None) -> Tool:
    schema, hints, doc = schema_from_function(f)
    fname = name or getattr(f, "__name__", None)
    if not fname or fname == "<lambda>":
        raise ToolCallError("a lambda has no usable name", hint="use tool(fn, name='...') or a def")
    return Tool(fname, description if description is not None else doc, schema, f, hints)


# ------------------------------------------------------------------------------------------ schemas


def schema_from_function(f: Callable[..., Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(parameters schema, {param: type}, description)`` from type hints, defaults and docstring."""
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError) as exc:
        raise ToolCallError(f"cannot read the signature of {f!r}: {exc}", hint="wrap it in a def") from None
    try:
        hints = typing.get_type_hints(f, include_extras=True)
    except Exception:  # string annotations naming local classes: try the function's closure
        try:
            local = dict(inspect.getclosurevars(f).nonlocals)
            hints = typing.get_type_hints(f, localns=local, include_extras=True)
        except Exception:
            hints = {k: p.annotation for k, p in sig.parameters.items() if p.annotation is not inspect.Parameter.empty}
    summary, param_docs = parse_docstring(inspect.getdoc(f) or "")
    defs: dict[str, Any] = {}
    props: dict[str, Any] = {}
    required: list[str] = []
    types_of: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or pname in ("self", "cls"):
            continue
        tp = hints.get(pname, Any)
        types_of[pname] = tp
        try:
            s = _type_schema(tp, defs)
        except ToolCallError as exc:
            raise ToolCallError(f"{getattr(f, '__name__', f)!r}, parameter {pname!r}: {exc.message}",
                                hint=exc.hint) from None
        if pname in param_docs and "description" not in s:
            s = {**s, "description": param_docs[pname]} if "$ref" not in s else {
                "allOf": [s], "description": param_docs[pname]}
        if p.default is inspect.Parameter.empty:
            required.append(pname)
        else:
            d = _json_default(p.default)
            if d is not _NO:
                s = {**s, "default": d}
        props[pname] = s
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    if defs:
        schema["$defs"] = defs
    return schema, types_of, summary


_NO = object()


def _json_default(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        v = v.value
    try:
        return json.loads(json.dumps(v))
    except (TypeError, ValueError):
        return _NO


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", bytes: "string", type(None): "null"}


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_json_schema") and hasattr(tp, "model_validate")


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema of a type hint; nested pydantic models / dataclasses go into *defs*."""
    if tp is Any or tp is inspect.Parameter.empty or tp is object:
        return {}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        s = _type_schema(args[0], defs)
        doc = next((a for a in args[1:] if isinstance(a, str)), None)
        doc = doc or next((getattr(a, "description", None) for a in args[1:] if getattr(a, "description", None)), None)
        return {**s, "description": doc} if doc else s
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    if tp is None:
        return {"type": "null"}
    if origin is typing.Literal:
        values = [a.value if isinstance(a, enum.Enum) else a for a in args]
        return _enum_schema(values)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_schema([m.value for m in tp])
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        subs = [_type_schema(a, defs) for a in args]
        if all(set(s) == {"type"} and isinstance(s["type"], str) for s in subs):
            return {"type": [s["type"] for s in subs]}
        return {"anyOf": subs}
    if origin in (list, set, frozenset) or tp in (list, set, frozenset) or origin in (Sequence,) or tp is Sequence:
        s: dict[str, Any] = {"type": "array"}
        if args:
            s["items"] = _type_schema(args[0], defs)
        return s
    if origin is tuple or tp is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type_schema(args[0], defs)}
        return {"type": "array", "prefixItems": [_type_schema(a, defs) for a in args],
                "minItems": len(args), "maxItems": len(args)}
    if origin in (dict, Mapping) or tp in (dict, Mapping) or (
        origin is not None and isinstance(origin, type) and issubclass(origin, Mapping)
    ):
        s = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            s["additionalProperties"] = _type_schema(args[1], defs)
        return s
    if _is_pydantic(tp):
        sub = tp.model_json_schema(ref_template="#/$defs/{model}")
        for k, v in (sub.pop("$defs", None) or {}).items():
            defs.setdefault(k, v)
        defs.setdefault(tp.__name__, sub)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder: recursion-safe
            hints = typing.get_type_hints(tp, include_extras=True)
            props, req = {}, []
            for fld in dataclasses.fields(tp):
                props[fld.name] = _type_schema(hints.get(fld.name, Any), defs)
                if fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                    req.append(fld.name)
            d: dict[str, Any] = {"type": "object", "properties": props}
            if req:
                d["required"] = req
            defs[tp.__name__] = d
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if isinstance(tp, str):
        raise ToolCallError(
            f"the annotation {tp!r} cannot be resolved",
            hint="define the types a tool uses at module level (or avoid string annotations for local classes)",
        )
    raise ToolCallError(
        f"the type {tp!r} has no JSON Schema here",
        hint="use str/int/float/bool, Literal, Enum, Optional, list/tuple/dict, dataclasses or pydantic models",
    )


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    kinds = {_SIMPLE.get(type(v)) for v in values}
    s: dict[str, Any] = {"enum": values}
    if len(kinds) == 1 and None not in kinds:
        s = {"type": kinds.pop(), "enum": values}
    return s


def _convert(tp: Any, value: Any) -> Any:
    """Build the Python value a parameter of type *tp* expects from its (valid) JSON form."""
    if value is None or tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _convert(args[0], value)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value)
            except Exception:
                continue
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if origin is typing.Literal:
        for a in args:
            if isinstance(a, enum.Enum) and a.value == value:
                return a
        return value
    if _is_pydantic(tp):
        return tp.model_validate(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        return tp(**{k: _convert(hints.get(k, Any), v) for k, v in value.items()})
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list):
        if origin is tuple or tp is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_convert(args[0], v) for v in value)
            return tuple(_convert(args[i] if i < len(args) else Any, v) for i, v in enumerate(value))
        if origin in (set, frozenset):
            return (origin or set)(_convert(args[0] if args else Any, v) for v in value)
        if args:
            return [_convert(args[0], v) for v in value]
    if isinstance(value, dict) and len(args) == 2:
        return {k: _convert(args[1], v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------- docstrings

_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params|Keyword Args|Returns?|Raises|Yields?|Examples?|Notes?|"
                      r"See Also|References|Attributes)\s*:?\s*$", re.IGNORECASE)
_GOOGLE_ITEM = re.compile(r"^(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^(\w+)\s*(?::\s*(.*))?$")
_SPHINX = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """``(description, {param: description})`` from a Google, NumPy or Sphinx style docstring."""
    lines = doc.expandtabs().splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _SECTION.match(line)
        underline = i + 1 < len(lines) and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1] or "") is not None
        if m and (line.rstrip().endswith(":") or underline):
            name = m.group(1).lower()
            i += 2 if underline else 1
            start = i
            while i < len(lines):
                nxt = lines[i]
                if _SECTION.match(nxt) and (nxt.rstrip().endswith(":") or (
                        i + 1 < len(lines) and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1] or ""))):
                    break
                i += 1
            if name in ("args", "arguments", "parameters", "params", "keyword args"):
                params.update(_section_items(lines[start:i], numpy=underline))
            continue
        sm = _SPHINX.match(line.strip())
        if sm:
            text = [sm.group(2)]
            i += 1
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(":"):
                text.append(lines[i].strip())
                i += 1
            params[sm.group(1)] = " ".join(t for t in text if t)
            continue
        if not line.strip().startswith(":"):
            summary.append(line)
        i += 1
    return "\n".join(summary).strip(), params


def _section_items(lines: list[str], *, numpy: bool) -> dict[str, str]:
    body = [ln for ln in lines]
    indents = [len(ln) - len(ln.lstrip()) for ln in body if ln.strip()]
    if not indents:
        return {}
    base = min(indents)
    out: dict[str, str] = {}
    current: str | None = None
    for ln in body:
        if not ln.strip():
            continue
        ind = len(ln) - len(ln.lstrip())
        text = ln.strip()
        if ind == base:
            m = _NUMPY_ITEM.match(text) if numpy else _GOOGLE_ITEM.match(text)
            if m:
                current = m.group(1).lstrip("*")
                out[current] = "" if numpy else (m.group(3) or "").strip()
                continue
            current = None
        elif current is not None:
            out[current] = f"{out[current]} {text}".strip()
    return out
