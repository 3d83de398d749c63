"""The regex dialect: patterns read as Python's ``re`` reads them, by the grammar and by the validator.

The grammar (llguidance, Rust syntax) is given each pattern rewritten by :func:`python_pattern`, so
it accepts what ``jsonschema`` (Python's ``re``) accepts. Outputs are validated against ``pattern``
and ``patternProperties`` with a time limit.

``jsonschema`` checks these with Python's ``re``, a backtracking engine with no time limit: a pattern
with look-around and nested quantifiers that the grammar cannot enforce, such as
``^(?!x)(a+)+$``, takes 0.26 s on 22 characters and twice as long with each one more, and an
output may be hundreds of characters long. The validators built by
:func:`edgeslm.decoding.normalize.make_validator` use the ``regex`` module instead, in its
``re``-compatible mode (``VERSION0``: the syntax and the matching rules of ``re``, so a pattern means
what it means to ``jsonschema`` and to the grammar), with a timeout: each search gets at most
:data:`PATTERN_TIME_LIMIT_S`, and all the searches of one validation together
:data:`VALIDATION_TIME_LIMIT_S`. A search that runs out of time counts as a failed check, so the
output is rejected (and the attempt retried), never accepted unchecked.

Not covered: ``unevaluatedProperties`` (drafts 2019-09 and 2020-12) matches property names against
``patternProperties`` inside ``jsonschema`` itself, with ``re``.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Iterator
from typing import Any

from .narrow import DATA_KEYS, SCHEMA_MAP_KEYS

__all__ = [
    "PATTERN_TIME_LIMIT_S",
    "VALIDATION_TIME_LIMIT_S",
    "BoundedValidator",
    "bounded_class",
    "python_pattern",
    "python_patterns",
    "search",
]

#: Longest one regex search may run, in seconds.
PATTERN_TIME_LIMIT_S = 0.05
#: Longest all the regex searches of one validation may run together, in seconds.
VALIDATION_TIME_LIMIT_S = 0.5

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("edgeslm_regex_deadline", default=None)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    import regex

    try:
        return regex.compile(pattern, flags=regex.VERSION0)
    except (regex.error, ValueError, TypeError, OverflowError, RecursionError):
        return None


def search(pattern: str, text: str) -> bool | None:
    """Whether *pattern* matches somewhere in *text* (``re.search``); ``None`` when that could not be
    decided in time (or the pattern does not compile)."""
    compiled = _compiled(pattern)
    if compiled is None:
        return None
    limit = PATTERN_TIME_LIMIT_S
    deadline = _DEADLINE.get()
    if deadline is not None:
        limit = min(limit, deadline - time.monotonic())
        if limit <= 0:
            return None
    try:
        return compiled.search(text, timeout=limit) is not None
    except (TimeoutError, RecursionError, MemoryError):
        return None


# --------------------------------------------------------------------------- jsonschema keywords


def _timeout_error(pattern: str, text: str) -> Any:
    from jsonschema import ValidationError

    return ValidationError(
        f"{text[:80]!r} could not be checked against the pattern {pattern!r} within its time limit"
    )


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema import ValidationError

    if not validator.is_type(instance, "string") or not isinstance(pattern, str):
        return
    found = search(pattern, instance)
    if found is None:
        yield _timeout_error(pattern, instance)
    elif not found:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object") or not isinstance(patterns, dict):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            found = search(pattern, key)
            if found is None:
                yield _timeout_error(pattern, key)
            elif found:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema import ValidationError

    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = []
    for key in instance:
        if key in declared:
            continue
        matched = False
        for pattern in patterns:
            found = search(pattern, key)
            if found is None:
                yield _timeout_error(pattern, key)
                matched = True
                break
            if found:
                matched = True
                break
        if not matched:
            extras.append(key)
    if validator.is_type(additional, "object"):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif additional is False and extras:
        names = ", ".join(repr(k) for k in sorted(extras))
        if patterns:
            yield ValidationError(f"{names} do not match any of the regexes: {', '.join(map(repr, patterns))}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


@functools.cache
def bounded_class(cls: Any) -> Any:
    """*cls* (a ``jsonschema`` validator class) with time-limited ``pattern``, ``patternProperties``
    and ``additionalProperties`` (which matches keys against ``patternProperties``)."""
    import jsonschema

    own = {"pattern": _pattern, "patternProperties": _pattern_properties,
           "additionalProperties": _additional_properties}
    return jsonschema.validators.extend(cls, {k: v for k, v in own.items() if k in cls.VALIDATORS})


class BoundedValidator:
    """A ``jsonschema`` validator whose regex checks share one time budget per validation, and that
    reports what stops a validation (a value nested too deeply, an unresolvable ``$ref``) as an
    error, never as an exception: a value that could not be validated is not valid. Anything else
    is delegated to the wrapped validator."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.schema = inner.schema

    def iter_errors(self, instance: Any) -> Iterator[Any]:
        from jsonschema import ValidationError

        token = _DEADLINE.set(time.monotonic() + VALIDATION_TIME_LIMIT_S)
        try:
            errors = list(self.inner.iter_errors(instance))
        except RecursionError:
            errors = [ValidationError("the value is nested too deeply to be validated")]
        except Exception as exc:  # an unresolvable $ref, a failing format checker...: not validated
            errors = [ValidationError(f"the value could not be validated: {type(exc).__name__}: {str(exc)[:200]}")]
        finally:
            _DEADLINE.reset(token)
        return iter(errors)

    def is_valid(self, instance: Any) -> bool:
        return next(self.iter_errors(instance), None) is None

    def validate(self, instance: Any) -> None:
        from jsonschema.exceptions import best_match

        error = best_match(self.iter_errors(instance))
        if error is not None:
            raise error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# --------------------------------------------------------------------------- the grammar's reading


def python_pattern(pattern: str) -> str:
    """Rewrite *pattern* so llguidance's (Rust) regex parser reads it as Python's ``re`` does.

    ``jsonschema`` validates ``pattern`` with ``re``, where ``[``, ``&`` and ``~`` inside a
    character class are literal characters (as in ECMA-262); in Rust's syntax they open a nested
    class or a set operation (``&&``, ``~~``), so ``^[[a-z]-]*$`` would accept other strings than
    the validator. Inside classes they are escaped; everything else is left as it is.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if not in_class:
            if c == "[":
                in_class = True
                out.append(c)
                i += 1
                if i < n and pattern[i] == "^":
                    out.append("^")
                    i += 1
                if i < n and pattern[i] == "]":  # a leading ] is literal
                    out.append("\\]")
                    i += 1
                continue
        elif c == "]":
            in_class = False
        elif c in "[&~":
            c = "\\" + c
        out.append(c)
        i += 1
    return "".join(out)


def python_patterns(schema: Any) -> Any:
    """*schema* with every ``pattern`` and ``patternProperties`` regex passed through
    :func:`python_pattern` (the same object when nothing changes)."""
    if isinstance(schema, list):
        new = [python_patterns(x) for x in schema]
        return schema if all(a is b for a, b in zip(new, schema, strict=True)) else new
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    changed = False
    for k, v in schema.items():
        if k in DATA_KEYS:
            w = v
        elif k == "pattern" and isinstance(v, str):
            w = python_pattern(v)
            w = v if w == v else w
        elif k == "patternProperties" and isinstance(v, dict):
            w = {python_pattern(n): python_patterns(x) for n, x in v.items()}
            if list(w) == list(v) and all(w[n] is v[n] for n in v):
                w = v
        elif k in SCHEMA_MAP_KEYS and isinstance(v, dict):
            w = {n: python_patterns(x) for n, x in v.items()}
            if all(w[n] is v[n] for n in v):
                w = v
        else:
            w = python_patterns(v)
        changed = changed or w is not v
        out[k] = w
    return out if changed else schema
