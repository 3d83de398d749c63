"""A schema as plain JSON: the input limits, the cache key, JSON pointers, and the validator.

:func:`normalize_schema` turns what callers pass (a dict, a bool, a JSON string, a pydantic model
class) into a private copy of plain JSON, refusing a schema longer than :data:`MAX_SCHEMA_CHARS`
characters or nested deeper than :data:`MAX_SCHEMA_DEPTH` levels. :func:`make_validator` checks
outputs against the *original* schema.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import SchemaError
from ._regex import BoundedValidator, bounded_class

__all__ = [
    "MAX_SCHEMA_CHARS",
    "MAX_SCHEMA_DEPTH",
    "MISSING",
    "escape_pointer",
    "make_validator",
    "normalize_schema",
    "resolve_pointer",
    "schema_key",
    "unescape_pointer",
]

#: Longest schema accepted, in characters of compact JSON (checking a schema validates it against
#: its meta-schema: about 2-4 s for 500,000 characters on a slow 2-core machine).
MAX_SCHEMA_CHARS = 500_000
#: Deepest nesting of JSON objects and arrays in a schema (llguidance's parser stops at 128).
MAX_SCHEMA_DEPTH = 128


def normalize_schema(schema: Any) -> dict | bool:
    """Return the JSON Schema as a plain ``dict`` (or bool); a pydantic model class gives its schema."""
    if isinstance(schema, type):
        fn = getattr(schema, "model_json_schema", None)
        if fn is None:
            raise SchemaError(
                f"{schema.__name__} is a class but not a pydantic model",
                hint="pass a JSON Schema dict or a pydantic.BaseModel subclass",
            )
        schema = fn()
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise SchemaError(f"the schema string is not JSON: {e}", hint="pass a dict") from None
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, dict):
        raise SchemaError(
            f"a JSON Schema must be a dict or a bool, not {type(schema).__name__}",
            hint="pass a JSON Schema dict or a pydantic.BaseModel subclass",
        )
    if _depth_over(schema, MAX_SCHEMA_DEPTH):
        raise SchemaError(
            f"the schema is nested more than {MAX_SCHEMA_DEPTH} levels deep (or contains itself)",
            hint="flatten it: define repeated parts once under $defs and refer to them with $ref",
        )
    try:
        # round-trip: plain JSON types only, and a private copy the caller cannot mutate
        text = json.dumps(schema, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as e:
        raise SchemaError(f"the schema is not plain JSON: {e}", hint="use only JSON types") from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise SchemaError(
            f"the schema is {len(text):,} characters long, more than the {MAX_SCHEMA_CHARS:,} accepted",
            hint="split it, or remove long descriptions and examples; a schema this size does not fit a "
            "small model's context anyway",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SchemaError(
            f"the schema holds text that is not valid Unicode (a lone surrogate {text[e.start]!r})",
            hint="remove or replace the lone surrogate characters (\\ud800-\\udfff)",
        ) from None
    return json.loads(text)  # type: ignore[no-any-return]


def _depth_over(value: Any, limit: int) -> bool:
    """Whether *value* nests dicts and lists more than *limit* levels deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            items: Any = v.values()
        elif isinstance(v, (list, tuple)):
            items = v
        else:
            continue
        if d > limit:
            return True
        stack.extend((x, d + 1) for x in items if isinstance(x, (dict, list, tuple)))
    return False


def schema_key(schema: Any) -> str:
    """Compact JSON of *schema*, in its own key order: the key of the schema caches."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def make_validator(schema: Any) -> BoundedValidator:
    """A ``jsonschema`` validator for the ORIGINAL schema: checks formats, never fetches a ``$ref``.

    Its regex checks (``pattern``, ``patternProperties``) run with a time limit, reading each
    pattern as Python's ``re`` does (:mod:`edgeslm.decoding._regex`); a value nested too deeply to
    validate is an error, not a ``RecursionError``."""
    import jsonschema
    from jsonschema_specifications import REGISTRY

    schema = normalize_schema(schema)
    cls = jsonschema.validators.validator_for(schema)
    return BoundedValidator(bounded_class(cls)(schema, registry=REGISTRY, format_checker=cls.FORMAT_CHECKER))


# --------------------------------------------------------------------------- JSON pointers


def escape_pointer(k: str) -> str:
    """*k* as one JSON-pointer segment (``~`` and ``/`` escaped)."""
    return k.replace("~", "~0").replace("/", "~1")


def unescape_pointer(k: str) -> str:
    """The key one JSON-pointer segment names (the inverse of :func:`escape_pointer`)."""
    return k.replace("~1", "/").replace("~0", "~")


#: What :func:`resolve_pointer` returns when nothing is at the pointer.
MISSING: Any = object()


def resolve_pointer(root: Any, ref: str) -> Any:
    """The node a local JSON-pointer ``$ref`` (``#``, ``#/$defs/a``) points at; :data:`MISSING` when
    none; the root for other fragments (anchors), which are not resolved here."""
    from urllib.parse import unquote

    if not ref.startswith("#/"):
        return root
    node = root
    for part in ref[2:].split("/"):
        part = unescape_pointer(unquote(part))
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node
