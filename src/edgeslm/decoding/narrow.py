"""Which JSON Schema keywords hold subschemas, and the one walker that narrows a schema for generation.

:data:`SUBSCHEMA_KEYS` is the one list of keywords whose value holds subschemas (every walker of
the decoding layer reads it). :func:`narrow` rebuilds a schema bottom-up and lets an edit narrow
each subschema; it never descends where narrowing would *widen* the whole (``not``, the ``if``
condition: :data:`WIDENING_KEYS`) nor into data (:data:`DATA_KEYS`). Two narrowings use it:

* :func:`tighten`: keeps small models on track (no invented keys, required keys first, anchored
  patterns); every output of the tightened grammar is valid under the original schema;
* :func:`cap`: bounds unbounded strings and arrays so a looping model cannot run away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

__all__ = [
    "DATA_KEYS",
    "SCHEMA_LIST_KEYS",
    "SCHEMA_MAP_KEYS",
    "SCHEMA_ONE_KEYS",
    "SUBSCHEMA_KEYS",
    "WIDENING_KEYS",
    "cap",
    "narrow",
    "tighten",
]

#: Every keyword whose value holds subschemas, by the value's shape: ``"map"`` (names, which are
#: not keywords, to subschemas; ``dependencies`` may map a name to a list of names instead),
#: ``"list"`` (a list of subschemas) or ``"one"`` (one subschema; ``items`` may also be a list, the
#: tuple form of drafts 4 to 2019-09).
SUBSCHEMA_KEYS: dict[str, Literal["map", "list", "one"]] = {
    "properties": "map",
    "patternProperties": "map",
    "$defs": "map",
    "definitions": "map",
    "dependentSchemas": "map",
    "dependencies": "map",
    "allOf": "list",
    "anyOf": "list",
    "oneOf": "list",
    "prefixItems": "list",
    "items": "one",
    "additionalItems": "one",
    "additionalProperties": "one",
    "not": "one",
    "if": "one",
    "then": "one",
    "else": "one",
    "contains": "one",
    "propertyNames": "one",
    "unevaluatedItems": "one",
    "unevaluatedProperties": "one",
}
SCHEMA_MAP_KEYS = tuple(k for k, shape in SUBSCHEMA_KEYS.items() if shape == "map")
SCHEMA_LIST_KEYS = tuple(k for k, shape in SUBSCHEMA_KEYS.items() if shape == "list")
SCHEMA_ONE_KEYS = tuple(k for k, shape in SUBSCHEMA_KEYS.items() if shape == "one")

#: Keywords whose value is data, never a subschema.
DATA_KEYS = frozenset({"enum", "const", "default", "examples", "required"})
#: Keywords holding subschemas that narrowing must leave alone: narrowing them widens the whole.
WIDENING_KEYS = frozenset({"not", "if"})

#: ``edit(node, rebuilt, key)``: the narrowed subschema, given the original *node*, its copy
#: *rebuilt* from narrowed children, and the keyword *key* it sits under (``None`` at the root and
#: under names).
Edit = Callable[[dict, dict, str | None], dict]


def narrow(schema: Any, edit: Edit, key: str | None = None) -> Any:
    """Rebuild *schema* bottom-up, passing every subschema (and any other object that may hold
    ``$ref`` targets, such as ``components``) through *edit*. The input is not modified."""
    if isinstance(schema, list):
        return [narrow(x, edit, key) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in DATA_KEYS or k in WIDENING_KEYS:
            out[k] = v
        elif SUBSCHEMA_KEYS.get(k) == "map":
            out[k] = {n: narrow(x, edit) for n, x in v.items()} if isinstance(v, dict) else v
        else:
            out[k] = narrow(v, edit, k)
    return edit(schema, out, key)


# --------------------------------------------------------------------------- tighten

#: Keywords that leave an object open to keys it does not list, or combine subschemas with it:
#: closing such an object (``additionalProperties: false``) could make it unsatisfiable.
_OPEN_KEYS = frozenset({"additionalProperties", "patternProperties", "unevaluatedProperties",
                        "allOf", "anyOf", "oneOf", "$ref", "if", "dependentSchemas", "dependencies"})


def tighten(schema: Any, *, in_all_of: bool = False) -> Any:
    """Narrow a schema for generation; every output of the narrowed grammar is valid under the
    original (a subset of the valid outputs), and it keeps small models on track:

    * properties the schema does not name are forbidden where it leaves objects open, so the model
      cannot invent keys. Left alone: objects that combine sub-schemas (``allOf``, ``$ref``...),
      ``allOf`` branches, and objects requiring keys they do not list, where closing them could make
      the schema unsatisfiable;
    * required properties come first (then the others, each group in schema order), so an output
      can close as soon as what is required is written;
    * a ``pattern`` that is not anchored at the start (``"\\d{4}-\\d{2}"`` matches anywhere in a
      string) must match at the start, so the model writes the value instead of text around it.
    """
    return narrow(schema, _tighten_node, "allOf" if in_all_of else None)


def _tighten_node(schema: dict, out: dict, key: str | None) -> dict:
    v = out.get("pattern")
    if isinstance(v, str) and not v.startswith("^"):
        out["pattern"] = f"^(?:{v})"
    required = schema.get("required")
    if isinstance(out.get("properties"), dict) and isinstance(required, list):
        props = out["properties"]
        first = {n: props[n] for n in props if n in required}
        out["properties"] = {**first, **{n: x for n, x in props.items() if n not in first}}
    props = schema.get("properties")
    if (
        isinstance(props, dict)
        and props
        and key != "allOf"
        and not (_OPEN_KEYS & schema.keys())
        and set(schema.get("required", [])) <= props.keys()
    ):
        out["additionalProperties"] = False
    return out


# --------------------------------------------------------------------------- cap


def cap(schema: Any, max_string: int | None, max_items: int | None) -> Any:
    """Add ``maxLength``/``maxItems`` caps where *schema* leaves strings/arrays unbounded (``None``:
    no cap). The result is *stricter* than the schema: it stops runaway generation."""

    def edit(s: dict, out: dict, key: str | None) -> dict:
        t = s.get("type")
        types = {x for x in t if isinstance(x, str)} if isinstance(t, list) else ({t} if isinstance(t, str) else set())
        if (
            max_string is not None
            and "string" in types
            and "maxLength" not in s
            and "enum" not in s
            and "const" not in s
            and "format" not in s
        ):
            out["maxLength"] = max(max_string, int(s.get("minLength", 0)))
        if max_items is not None and "array" in types and "maxItems" not in s:
            prefix = s.get("prefixItems", s.get("items") if isinstance(s.get("items"), list) else [])
            out["maxItems"] = max(max_items, int(s.get("minItems", 0)), len(prefix or []))
        return out

    return narrow(schema, edit)
