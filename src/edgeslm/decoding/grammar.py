"""Grammar building: the llguidance grammar of a checked schema, optionally capped, cached."""

from __future__ import annotations

import functools
import json
from typing import Any

from .._errors import SchemaError
from .narrow import cap
from .normalize import schema_key
from .support import GRAMMAR_OPTIONS, SchemaSupport, check_schema

__all__ = ["compile_grammar", "grammar_for", "grammar_options"]


def grammar_options(compact: bool = True) -> dict[str, Any]:
    """The JSON compile options (llguidance ``overrides``): :data:`GRAMMAR_OPTIONS` for compact
    output; otherwise the same strictness with flexible whitespace."""
    opts = dict(GRAMMAR_OPTIONS)
    if not compact:
        opts.update(whitespace_flexible=True, item_separator=None, key_separator=None)
        opts = {k: v for k, v in opts.items() if v is not None}
    return opts


@functools.lru_cache(maxsize=512)
def _grammar_cached(key: str, compact: bool, max_string: int | None, max_items: int | None) -> tuple[str, str]:
    """The grammar of the schema *key* with these caps, and the JSON text of the schema compiled."""
    from llguidance import LLMatcher

    schema = json.loads(key)
    if max_string is not None or max_items is not None:
        schema = cap(schema, max_string, max_items)
    g = LLMatcher.grammar_from_json_schema(schema, overrides=grammar_options(compact))
    is_err, msgs = LLMatcher.validate_grammar_with_warnings(g)
    if is_err:
        raise SchemaError(
            f"llguidance cannot compile the schema: {msgs[0] if msgs else 'unknown error'}",
            hint="check it with edgeslm.decoding.schema.check_schema() first",
        )
    return g, schema_key(schema)


def compile_grammar(
    schema_or_support: Any,
    *,
    compact: bool = True,
    max_string: int | None = None,
    max_items: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """:func:`grammar_for`, and the JSON Schema the grammar was compiled from (the grammar schema
    with its caps; the caller's own copy)."""
    support = schema_or_support if isinstance(schema_or_support, SchemaSupport) else check_schema(schema_or_support)
    if not support or support.grammar_schema is None:
        raise SchemaError(
            f"this schema cannot be served: {support.reason}",
            hint="fix the schema as the message says, or pass a simpler one",
        )
    grammar, text = _grammar_cached(schema_key(support.grammar_schema), compact, max_string, max_items)
    return grammar, json.loads(text)


def grammar_for(
    schema_or_support: Any,
    *,
    compact: bool = True,
    max_string: int | None = None,
    max_items: int | None = None,
) -> str:
    """The llguidance grammar for a schema (checked first) or a :class:`SchemaSupport`.

    ``max_string``/``max_items`` cap unbounded strings and arrays: this makes the grammar *stricter*
    than the schema (to stop runaway generation); leave them ``None`` for a sound grammar.
    Raises :class:`SchemaError` for a refused schema.
    """
    support = schema_or_support if isinstance(schema_or_support, SchemaSupport) else check_schema(schema_or_support)
    if not support or support.grammar_schema is None:
        raise SchemaError(
            f"this schema cannot be served: {support.reason}",
            hint="fix the schema as the message says, or pass a simpler one",
        )
    return _grammar_cached(schema_key(support.grammar_schema), compact, max_string, max_items)[0]
