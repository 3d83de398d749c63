"""Regex checks with a time limit, for validating outputs against ``pattern`` and ``patternProperties``.

``jsonschema`` checks these with Python's ``re``, a backtracking engine with no time limit: a pattern
with look-around and nested quantifiers that the grammar cannot enforce, such as
``^(?!x)(a+)+$``, takes 0.26 s on 22 characters and twice as long with each one more, and an
output may be hundreds of characters long. The validators built by
:func:`edgeslm.decoding.schema.make_validator` use the ``regex`` module instead, in its
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

__all__ = ["PATTERN_TIME_LIMIT_S", "VALIDATION_TIME_LIMIT_S", "BoundedValidator", "bounded_class", "search"]

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
