"""A Jinja sandbox with a bound on the work and the memory one render may use.

Jinja's ``ImmutableSandboxedEnvironment`` stops a template from reaching Python internals, but not
from running forever or allocating without limit: ``range`` is capped per call, not in total (two
nested loops of 100,000 iterations run 10^10 times), and one expression such as ``'a' * 10**10`` or
``'x'|center(10**9)`` asks for gigabytes at once. Chat templates come from model files, so this
module adds:

* a **step budget and a deadline** for one render: every block the template enters (loop bodies,
  macro bodies, branches) and every loop item counts one step, as does every call, filter and
  intercepted operator; the clock is read at least every 64 steps;
* a **size limit** on every value an operation can amplify (``+``, ``*``, ``**``, ``%``, ``~``,
  string methods, filters, buffered output of macros and blocks, the output itself), checked
  *before* the value is built where an operation can multiply its input (widths, repeat counts,
  ``replace``, ``join``, ``format``...), and after it otherwise;
* integers limited to :data:`MAX_INT_BITS` bits in ``*`` and ``**``.

A template that crosses a limit raises :class:`RenderLimitError`, which
:class:`~edgeslm.decoding.template.ChatTemplate` turns into ``UnsafeTemplateError``.
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, _PassArg

__all__ = ["MAX_INT_BITS", "BoundedSandbox", "RenderBudget", "RenderLimitError", "estimate_size"]

#: Largest integer (in bits) that ``*`` and ``**`` may produce inside a template.
MAX_INT_BITS = 16_384
#: Steps between two reads of the clock (blocks and loop items; calls always read it).
_CLOCK_EVERY = 64
_ITER_FILTER = "edgeslm_counted_iter"


class RenderLimitError(Exception):
    """A template crossed one of its render limits (steps, time, size, integer size); ``what``
    completes "the template was stopped: it ..."."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(what)


@dataclass
class RenderBudget:
    """What one render may use. ``max_chars`` bounds the output and every intermediate value."""

    max_steps: int
    max_chars: int
    time_limit_s: float
    steps: int = 0
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.perf_counter() + self.time_limit_s

    def tick(self, n: int = 1, *, clock: bool = False) -> None:
        self.steps += n
        if self.steps > self.max_steps:
            raise RenderLimitError(f"took more than {self.max_steps:,} steps (loop iterations, blocks, calls)")
        if (clock or self.steps % _CLOCK_EVERY == 0) and time.perf_counter() > self.deadline:
            raise RenderLimitError(f"ran for more than {self.time_limit_s:g} s")


_ACTIVE: contextvars.ContextVar[RenderBudget | None] = contextvars.ContextVar("edgeslm_render_budget", default=None)
#: Size limit used when no render is active (compiling, or a filter called outside a render).
_DEFAULT_MAX_CHARS = 1_000_000


def active(budget: RenderBudget | None) -> contextvars.Token[RenderBudget | None]:
    """Make *budget* the one the sandbox charges (until ``_ACTIVE.reset(token)``)."""
    return _ACTIVE.set(budget)


def reset(token: contextvars.Token[RenderBudget | None]) -> None:
    _ACTIVE.reset(token)


def _limit() -> int:
    b = _ACTIVE.get()
    return b.max_chars if b is not None else _DEFAULT_MAX_CHARS


def _tick(*, clock: bool = True) -> None:
    b = _ACTIVE.get()
    if b is not None:
        b.tick(clock=clock)


def _check(size: int, what: str) -> None:
    limit = _limit()
    if size > limit:
        raise RenderLimitError(f"built {what} of about {size:,} characters, above the limit of {limit:,}")


def estimate_size(value: Any, cap: int | None = None) -> int:
    """Roughly how many characters ``str(value)`` takes (containers walked without recursion).

    A container reached twice is counted twice, as ``str()`` would print it twice (lists built
    from themselves, ``[x, x]``, double at each level). The walk stops once *cap* is passed: the
    result is then only known to be larger than *cap*, and every container counts at least 2, so
    the walk itself is bounded."""
    cap = _limit() if cap is None else cap
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v) + 2
        elif isinstance(v, (bytes, bytearray)):
            total += 4 * len(v) + 3
        elif v is None or isinstance(v, (bool, float, complex)):
            total += 24
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 2
        elif isinstance(v, (list, tuple, set, frozenset, dict, Namespace)):
            if isinstance(v, Namespace):
                v = object.__getattribute__(v, "_Namespace__attrs")
            if isinstance(v, dict):
                total += 2 + 4 * len(v)
                if total <= cap:
                    stack.extend(v.keys())
                    stack.extend(v.values())
            else:
                total += 2 + 2 * len(v)
                if total <= cap:
                    stack.extend(v)
        else:
            total += 64
        if total > cap:
            return total
    return total


def _seq_size(value: Any) -> int:
    """Characters of a string, or elements (plus their sizes) of a list or tuple."""
    return len(value) if isinstance(value, str) else estimate_size(value)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_FIELD = re.compile(r"\{[^{}]*\}")


def _format_widths(fmt: str, percent: bool) -> int:
    """The largest width or precision written in a format string (``%10s`` or ``{:>10}``)."""
    best = 0
    if percent:
        for m in _PERCENT_SPEC.finditer(fmt):
            for g in m.groups():
                if g and g.isdigit():
                    best = max(best, int(g) if len(g) < 12 else 10**12)
    else:
        for m in _FORMAT_FIELD.finditer(fmt):
            for d in re.findall(r"\d+", m.group()):
                best = max(best, int(d) if len(d) < 12 else 10**12)
    return best


def _args_size(args: Iterable[Any], widths: bool) -> int:
    """Size of formatted arguments; with *widths*, integers may be field widths (``%*s``, ``{:{}}``)."""
    total = 0
    for a in args:
        if widths and isinstance(a, int) and not isinstance(a, bool):
            total += abs(a)
        total += estimate_size(a)
    return total


def _percent_size(fmt: str, args: Any) -> int:
    items = args if isinstance(args, tuple) else (args.values() if isinstance(args, dict) else (args,))
    return len(fmt) + _format_widths(fmt, True) * max(1, fmt.count("%")) + _args_size(items, "*" in fmt)


def _replace_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    if not (isinstance(old, str) and isinstance(new, str)):
        return len(s)
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and not isinstance(count, bool) and 0 <= count < n:
        n = count
    return len(s) + n * max(0, len(new) - len(old))


def _join_size(sep: str, items: list[Any]) -> int:
    return sum(estimate_size(x) for x in items) + len(sep) * len(items)


def _width(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --------------------------------------------------------------------------- calls and methods


def _method_size(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """Size of what a call of a string method would build, when it can amplify its input."""
    target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format in a function
    owner = getattr(target, "__self__", None)
    if not isinstance(owner, str):
        return None
    name = getattr(target, "__name__", "")
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(len(owner), _width(args[0] if args else kwargs.get("width")))
    if name == "expandtabs":
        size = _width(args[0] if args else kwargs.get("tabsize", 8))
        return len(owner) + owner.count("\t") * size
    if name == "replace":
        return _replace_size(owner, *args[:3])
    if name in ("format", "format_map"):
        values = list(args) + list(kwargs.values())
        if name == "format_map" and args and isinstance(args[0], dict):
            values = list(args[0].values())
        nested = re.search(r"\{[^{}]*\{", owner) is not None
        return len(owner) + _format_widths(owner, False) * max(1, owner.count("{")) + _args_size(values, nested)
    if name == "translate" and args and isinstance(args[0], dict):
        longest = max((estimate_size(v) for v in args[0].values()), default=1)
        return len(owner) * max(1, longest)
    if name == "join" and args and isinstance(args[0], (list, tuple)):
        return _join_size(owner, list(args[0]))
    return None


# --------------------------------------------------------------------------- filters


def _filter_size(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """Size of what a filter would build, for the filters that can amplify their input."""

    def arg(i: int, key: str, default: Any = None) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    text = value if isinstance(value, str) else None
    if name == "center":
        return max(len(text or ""), _width(arg(0, "width", 80)))
    if name == "indent" and text is not None:
        width = arg(0, "width", 4)
        per_line = len(width) if isinstance(width, str) else _width(width)
        return len(text) + (text.count("\n") + 1) * per_line
    if name == "wordwrap" and text is not None:
        width = max(1, _width(arg(0, "width", 79)))
        wrap = arg(2, "wrapstring") or "\n"
        return len(text) + (len(text) // width + 1) * (len(wrap) if isinstance(wrap, str) else 1)
    if name == "replace" and text is not None:
        return _replace_size(text, arg(0, "old"), arg(1, "new"), arg(2, "count", -1))
    if name == "format" and text is not None:
        return _percent_size(text, kwargs if kwargs else tuple(args))
    if name in ("batch", "slice"):
        return _width(arg(0, "linecount" if name == "batch" else "slices")) + estimate_size(value)
    if name in ("pprint", "string", "list", "tojson", "urlize", "escape", "e", "forceescape", "urlencode"):
        return estimate_size(value)
    return None


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if _PassArg.from_obj(func) is not None else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        head, value, rest = args[:skip], args[skip] if len(args) > skip else None, args[skip + 1 :]
        if name == "join" and value is not None and not isinstance(value, (str, list, tuple, dict)):
            value = list(value)  # a generator: materialize it once to measure it
            args = (*head, value, *rest)
        if name == "join" and isinstance(value, (list, tuple)):
            d = rest[0] if rest else kwargs.get("d", "")
            _check(_join_size(d if isinstance(d, str) else "", list(value)), "a joined string")
        if name == "sum":
            start = rest[1] if len(rest) > 1 else kwargs.get("start", 0)
            if not isinstance(start, (int, float)):
                raise RenderLimitError("summed values that are not numbers")
        size = _filter_size(name, value, rest, kwargs)
        if size is not None:
            _check(size, f"the result of |{name}")
        result = func(*args, **kwargs)
        if isinstance(result, (str, list, tuple, dict)):
            _check(_seq_size(result), f"the result of |{name}")
        return result

    return guarded


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every loop's iterable passes through this: each item is one step."""
    budget = _ACTIVE.get()
    for item in iterable:
        if budget is not None:
            budget.tick()
        yield item


# --------------------------------------------------------------------------- code generation


class _Codegen(CodeGenerator):
    """Jinja's code generator, with a step charged at every block and loop item, and ``~`` routed
    through a size check."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _ITER_FILTER, [], [], None, None, lineno=loop.lineno)
        super().visit_Template(node, frame)

    def blockvisit(self, body: Iterable[nodes.Node], frame: Frame) -> None:
        self.writeline("environment.edgeslm_tick()")
        super().blockvisit(body, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.edgeslm_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _concat(pieces: Iterable[Any]) -> str:
    """Join buffered output (macros, blocks, the whole render) after checking its size."""
    out: list[str] = []
    total = 0
    limit = _limit()
    for p in pieces:
        s = p if isinstance(p, str) else str(p)
        total += len(s)
        if total > limit:
            raise RenderLimitError(f"wrote more than {limit:,} characters")
        out.append(s)
    return "".join(out)


def _finalize(value: Any) -> Any:
    if not isinstance(value, str):
        _check(estimate_size(value), "a printed value")
    return value


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """``ImmutableSandboxedEnvironment`` with the limits described in the module docstring."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _Codegen

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(optimized=False, finalize=_finalize, **kwargs)  # no folding at compile time
        self.globals.pop("lipsum", None)
        self.concat = _concat  # type: ignore[assignment]

    def wrap_filters(self) -> None:
        """Put a size check around every filter (call after registering custom filters)."""
        self.filters = {n: _guard_filter(n, f) for n, f in self.filters.items()}
        self.filters[_ITER_FILTER] = _counted

    @staticmethod
    def edgeslm_tick() -> None:
        b = _ACTIVE.get()
        if b is not None:
            b.tick()

    @staticmethod
    def edgeslm_join(items: tuple[Any, ...]) -> str:
        _tick()
        _check(sum(len(x) if isinstance(x, str) else estimate_size(x) for x in items), "a ~ concatenation")
        return "".join(x if isinstance(x, str) else str(x) for x in items)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick(clock=False)  # one operator is quick; what it could build is measured before
        if operator == "+" and isinstance(left, str) and isinstance(right, str):  # the common case
            _check(len(left) + len(right), "a + result")
            return left + right
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _check(_seq_size(left) + _seq_size(right), "a + result")
        elif operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            _check(_percent_size(left, right), "a % formatted string")
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, (str, list, tuple)):
            _check(_seq_size(result), f"a {operator} result")
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        if (
            isinstance(getattr(__obj, "__self__", None), str)
            and getattr(__obj, "__name__", "") == "join"
            and args
            and not isinstance(args[0], (str, list, tuple))
        ):
            args = (list(args[0]), *args[1:])  # a generator: materialize it once to measure it
        size = _method_size(__obj, args, kwargs)
        if size is not None:
            _check(size, f"the result of {getattr(__obj, '__name__', 'a call')}()")
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, (str, list, tuple, dict)):
            _check(_seq_size(result), "a call's result")
        return result


def _check_repeat(left: Any, right: Any) -> None:
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and not isinstance(n, bool):
            _check(_seq_size(seq) * max(0, n), "a repeated sequence")
            return
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise RenderLimitError(f"built an integer of more than {MAX_INT_BITS:,} bits")


def _check_power(base: Any, exp: Any) -> None:
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if base.bit_length() * exp > MAX_INT_BITS:
            raise RenderLimitError(f"built an integer of more than {MAX_INT_BITS:,} bits")
