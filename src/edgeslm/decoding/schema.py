"""JSON Schema support for grammar-constrained extraction: what the grammar can promise.

:func:`check_schema` sorts a schema into one of three levels, never overstating what the grammar
enforces:

``exact``
    llguidance compiles the schema unchanged, and every validation keyword in it is one the grammar
    enforces. Output accepted by the grammar is valid; validating it is still cheap insurance.
``relaxed``
    Keywords the grammar cannot enforce (``not``, ``uniqueItems``, ``if``/``then``/``else``,
    unknown ``format``\\s, look-around ``pattern``\\s...) were removed or widened, giving
    ``grammar_schema``: a *superset* of the original (everything valid under the original is
    accepted by the grammar). ``unenforced`` lists what was dropped; the caller must validate
    every output against the original schema (:func:`make_validator`) and retry.
``refused``
    Not valid JSON Schema, a remote or unresolvable ``$ref`` (never fetched), an unsatisfiable
    schema, or one that llguidance cannot compile even after relaxation.

Findings for llguidance 1.9.1 (strict mode, measured; see ``tests/test_schema.py``):

* enforced: ``type``, ``enum``, ``const``, ``properties``, ``required``, ``additionalProperties``,
  ``patternProperties`` (disjoint patterns only), ``minProperties``/``maxProperties`` (only when
  every listed property is required), ``items``, ``prefixItems``, ``additionalItems``,
  ``minItems``, ``maxItems``, ``minLength``, ``maxLength``, ``pattern`` (no look-around or
  back-references), ``format`` (``date-time``, ``time``, ``date``, ``duration``, ``email``,
  ``hostname``, ``ipv4``, ``ipv6``, ``uuid``, ``uri``), ``minimum``, ``maximum``,
  ``exclusiveMinimum``, ``exclusiveMaximum`` (draft-04 booleans too), ``multipleOf``, ``anyOf``,
  ``allOf`` (most intersections), ``oneOf`` (only when provably disjoint), local ``$ref``.
* refused by the compiler (never silently ignored in strict mode): ``not``, ``uniqueItems``,
  ``contains``/``minContains``/``maxContains``, ``if``/``then``/``else``, ``dependencies``,
  ``dependentRequired``, ``dependentSchemas``, ``propertyNames``, ``unevaluated*``,
  ``$dynamicRef``/``$recursiveRef``, unknown formats.
* not enforced together: a ``pattern`` and a ``minLength``/``maxLength`` above
  :data:`PATTERN_LENGTH_LIMIT`. The grammar engine builds the intersection of the two lazily, and
  its size is the pattern's states times the length (``(?:\\S+\\s+){0,99}\\S+`` with
  ``maxLength: 5000`` exhausts llguidance's lexer budget and then rejects valid strings), so the
  length bound is dropped from the grammar (relaxed: the pattern stays enforced, the length is
  validated).
* silently ignored: keys that are not keywords (``x-*``, ``title``, typos). A user's
  ``"x-guidance": {"lenient": true}`` would make llguidance ignore keywords, so it is removed
  and strictness is forced through ``overrides``.
* departures the grammar adds (stricter than the schema, never looser): object properties come
  in schema order, then additional ones; compact JSON with ``,``/``:`` separators; no
  ``\\uXXXX`` escape for characters that can be written raw (and ``\\u007f`` for DEL); integers
  written without fraction or exponent; ``\\d``/``\\w``/``\\s`` in patterns are ASCII-only, as
  ECMA-262 (JSON Schema's regex dialect) defines them, while Python's ``re`` (used by
  ``jsonschema``) is Unicode-aware. :func:`canonical_json` writes an instance the way the
  grammar emits it.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._errors import SchemaError

if TYPE_CHECKING:
    import jsonschema.protocols

__all__ = [
    "GRAMMAR_OPTIONS",
    "SchemaSupport",
    "canonical_json",
    "check_schema",
    "grammar_for",
    "make_validator",
    "normalize_schema",
]

#: JSON compile options: compact output, and strict keyword handling that no schema can override.
GRAMMAR_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ",",
    "key_separator": ":",
    "lenient": False,
    "coerce_one_of": False,
}

#: ``format`` values llguidance 1.9.1 enforces; any other makes it refuse the schema.
LLG_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"})

#: Largest ``minLength``/``maxLength`` the grammar enforces on a string that also has a ``pattern``.
PATTERN_LENGTH_LIMIT = 256

#: Validation keywords the grammar enforces (some only partly: the compiler refuses the rest).
ENFORCED = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "minProperties",
        "maxProperties",
        "items",
        "prefixItems",
        "additionalItems",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "anyOf",
        "allOf",
        "oneOf",
        "$ref",
    }
)

#: Keywords (of any draft) that the grammar never enforces: always dropped when relaxing.
NOT_ENFORCED = frozenset(
    {
        "not",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "if",
        "then",
        "else",
        "dependencies",
        "dependentRequired",
        "dependentSchemas",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
        "$dynamicRef",
        "$recursiveRef",
        "disallow",
        "divisibleBy",
        "extends",
    }
)

_SCHEMA_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LIST_KEYS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE_KEYS = ("additionalProperties", "additionalItems")
_DATA_KEYS = frozenset({"enum", "const", "default", "examples", "required"})
_DRAFTS_REF_OVERRIDES = frozenset({"Draft3Validator", "Draft4Validator", "Draft6Validator", "Draft7Validator"})


@dataclass(frozen=True)
class SchemaSupport:
    """How far a grammar can enforce a schema (see the module docstring)."""

    level: Literal["exact", "relaxed", "refused"]
    unenforced: tuple[str, ...] = ()
    reason: str | None = None
    grammar_schema: dict | None = None

    @property
    def exact(self) -> bool:
        """Whether the grammar enforces the whole schema."""
        return self.level == "exact"

    def __bool__(self) -> bool:
        return self.level != "refused"


# --------------------------------------------------------------------------- input handling


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
    try:
        # round-trip: plain JSON types only, and a private copy the caller cannot mutate
        return json.loads(json.dumps(schema, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise SchemaError(f"the schema is not plain JSON: {e}", hint="use only JSON types") from None


def _key(schema: Any) -> str:
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def make_validator(schema: Any) -> jsonschema.protocols.Validator:
    """A ``jsonschema`` validator for the ORIGINAL schema: checks formats, never fetches a ``$ref``."""
    import jsonschema
    from jsonschema_specifications import REGISTRY

    schema = normalize_schema(schema)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=REGISTRY, format_checker=cls.FORMAT_CHECKER)


# --------------------------------------------------------------------------- llguidance compile


def _compile_error(schema: dict, options: tuple[tuple[str, Any], ...] = ()) -> str | None:
    """Compile with llguidance; ``None`` when it compiles without error or warning."""
    from llguidance import LLMatcher

    opts = dict(GRAMMAR_OPTIONS, **dict(options))
    try:
        g = LLMatcher.grammar_from_json_schema(schema, overrides=opts)
    except (ValueError, TypeError) as e:
        return str(e)
    is_err, msgs = LLMatcher.validate_grammar_with_warnings(g)
    if is_err:
        return msgs[0] if msgs else "unknown error"
    return "; ".join(msgs) if msgs else None


@functools.lru_cache(maxsize=4096)
def _pattern_ok(pattern: str) -> bool:
    return _compile_error({"type": "string", "pattern": pattern}) is None


@functools.lru_cache(maxsize=4096)
def _number_ok(key: str) -> bool:
    return _compile_error(json.loads(key)) is None


# --------------------------------------------------------------------------- regex dialect


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
        if k in _DATA_KEYS:
            w = v
        elif k == "pattern" and isinstance(v, str):
            w = python_pattern(v)
            w = v if w == v else w
        elif k == "patternProperties" and isinstance(v, dict):
            w = {python_pattern(n): python_patterns(x) for n, x in v.items()}
            if list(w) == list(v) and all(w[n] is v[n] for n in v):
                w = v
        elif k in _SCHEMA_MAP_KEYS and isinstance(v, dict):
            w = {n: python_patterns(x) for n, x in v.items()}
            if all(w[n] is v[n] for n in v):
                w = v
        else:
            w = python_patterns(v)
        changed = changed or w is not v
        out[k] = w
    return out if changed else schema


# --------------------------------------------------------------------------- relaxation


@dataclass
class _Flags:
    oneof_to_anyof: bool = False
    drop_prop_counts: bool = False
    merge_pattern_props: bool = False


class _Relaxer:
    """Walk a schema, dropping or widening what the grammar cannot enforce; record each change."""

    def __init__(self, validator_cls: type, flags: _Flags) -> None:
        self.keywords = frozenset(validator_cls.VALIDATORS)
        self.ref_overrides = validator_cls.__name__ in _DRAFTS_REF_OVERRIDES
        self.flags = flags
        self.unenforced: list[str] = []
        self.notes: list[str] = []

    def drop(self, path: str, what: str) -> None:
        self.unenforced.append(f"{path or '/'}: {what}")

    def node(self, s: Any, path: str) -> Any:
        if not isinstance(s, dict):
            return s
        out: dict[str, Any] = {}
        has_ref = "$ref" in s
        for k, v in s.items():
            p = f"{path}/{_esc(k)}"
            if k == "x-guidance":
                self.notes.append(f"{path or '/'}: x-guidance options ignored")
                continue
            if k in _DATA_KEYS:
                out[k] = v
                continue
            if has_ref and self.ref_overrides and k != "$ref" and k in self.keywords:
                # drafts 3-7: keywords beside $ref are ignored by validators, so must be by the grammar
                self.notes.append(f"{path or '/'}: {k} beside $ref ignored (draft-07 and earlier)")
                continue
            if k in NOT_ENFORCED or (k in self.keywords and k not in ENFORCED):
                self.drop(path, k)
                continue
            if k == "format":
                if isinstance(v, str) and v not in LLG_FORMATS and _may_be(s, "string"):
                    self.drop(path, f"format={v}")
                    continue
                out[k] = v
            elif k == "pattern":
                if not (isinstance(v, str) and _pattern_ok(v)):
                    self.drop(path, "pattern")
                    continue
                out[k] = v
            elif (
                k in ("minLength", "maxLength")
                and isinstance(v, int)
                and v > PATTERN_LENGTH_LIMIT
                and isinstance(s.get("pattern"), str)
                and _pattern_ok(s["pattern"])
            ):
                self.drop(path, f"{k}={v} (beside a pattern: beyond the grammar engine's budget)")
            elif k == "oneOf" and self.flags.oneof_to_anyof and isinstance(v, list):
                self.drop(path, "oneOf (generated as anyOf)")
                lst = [self.node(x, f"{p}/{i}") for i, x in enumerate(v)]
                if "anyOf" in s:  # keep both: intersect through allOf
                    out.setdefault("allOf", []).append({"anyOf": lst})
                else:
                    out["anyOf"] = lst
            elif k in ("minProperties", "maxProperties") and self.flags.drop_prop_counts:
                self.drop(path, k)
            elif k == "patternProperties" and self.flags.merge_pattern_props and isinstance(v, dict):
                self.drop(path, "patternProperties (merged into additionalProperties)")
                out["x-edgeslm-pp"] = [self.node(x, f"{p}/{_esc(n)}") for n, x in v.items()]
            elif k in _SCHEMA_MAP_KEYS and isinstance(v, dict):
                out[k] = {n: self.node(x, f"{p}/{_esc(n)}") for n, x in v.items()}
            elif k in _SCHEMA_LIST_KEYS and isinstance(v, list):
                if k == "allOf" and isinstance(out.get("allOf"), list):
                    out["allOf"] = out["allOf"] + [self.node(x, f"{p}/{i}") for i, x in enumerate(v)]
                else:
                    out[k] = [self.node(x, f"{p}/{i}") for i, x in enumerate(v)]
            elif k == "items":
                if isinstance(v, list):
                    out[k] = [self.node(x, f"{p}/{i}") for i, x in enumerate(v)]
                else:
                    out[k] = self.node(v, p)
            elif k in _SCHEMA_ONE_KEYS:
                out[k] = self.node(v, p)
            elif k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    kind = "number" if _may_be(s, "number") else "integer"
                    if not _number_ok(_key({"type": kind, k: v})):
                        self.drop(path, f"{k}={v}")
                        continue
                out[k] = v
            elif k not in self.keywords and isinstance(v, dict) and not k.startswith("$"):
                out[k] = self.node(v, p)  # unknown container (e.g. components): may hold $ref targets
            else:
                out[k] = v
        pp = out.pop("x-edgeslm-pp", None)
        if pp is not None:
            ap = out.get("additionalProperties", True)
            if ap is not True and ap != {}:
                opts = [x for x in [ap, *pp] if x is not False]
                out["additionalProperties"] = {"anyOf": opts} if opts else False
        return out


def _may_be(s: dict, kind: str) -> bool:
    """Whether the node's ``type`` allows *kind* (no ``type`` allows everything)."""
    t = s.get("type")
    types = t if isinstance(t, list) else [t]
    return t is None or kind in types


def _esc(k: str) -> str:
    return k.replace("~", "~0").replace("/", "~1")


def _unesc(k: str) -> str:
    return k.replace("~1", "/").replace("~0", "~")


# --------------------------------------------------------------------------- fallback: any JSON


def _children(s: Any, path: tuple) -> list[tuple]:
    """Paths (tuples of keys) of the direct subschemas of the node at *path*."""
    if not isinstance(s, dict):
        return []
    out: list[tuple] = []
    for k, v in s.items():
        if k in _SCHEMA_MAP_KEYS and isinstance(v, dict):
            out += [(*path, k, n) for n in v]
        elif (k in _SCHEMA_LIST_KEYS or k == "items") and isinstance(v, list):
            out += [(*path, k, i) for i in range(len(v))]
        elif (k in _SCHEMA_ONE_KEYS or k == "items") and isinstance(v, dict):
            out.append((*path, k))
    return out


def _get(s: Any, path: tuple) -> Any:
    for p in path:
        s = s[p]
    return s


def _replaced(s: dict, path: tuple, value: Any = None) -> dict:
    s = copy.deepcopy(s)
    parent = _get(s, path[:-1])
    parent[path[-1]] = {} if value is None else value
    return s


def _ptr(path: tuple) -> str:
    return "/" + "/".join(_esc(str(x)) for x in path)


# removing these could make a sibling keyword stricter (additionalProperties, items, additionalItems)
_NOT_DROPPABLE = frozenset({"properties", "patternProperties", "prefixItems", "items", "$defs", "definitions"})


def _fallback(schema: dict, budget: int = 400) -> tuple[dict, list[str]] | None:
    """Widen the schema until llguidance compiles it; ``None`` if only replacing the root would do.

    Descends while replacing one subschema with ``{}`` (any JSON) fixes everything, then prefers
    dropping a single keyword of that node to replacing the node. Every step only widens."""
    notes: list[str] = []

    def ok(s: dict) -> bool:
        nonlocal budget
        budget -= 1
        return _compile_error(s) is None

    for _ in range(25):
        if ok(schema):
            return schema, notes
        if budget <= 0:
            return None
        node: tuple = ()
        while budget > 0:
            fix = next((c for c in _children(_get(schema, node), node) if ok(_replaced(schema, c))), None)
            if fix is None:
                break
            node = fix
        here = _get(schema, node)
        dropped = False
        for k in list(here) if isinstance(here, dict) else []:
            if k in _NOT_DROPPABLE or k not in ENFORCED:
                continue
            trial = copy.deepcopy(schema)
            del _get(trial, node)[k]
            if ok(trial):
                schema, dropped = trial, True
                notes.append(f"{_ptr(node)}: {k}")
                break
        if dropped:
            continue
        if node:
            schema = _replaced(schema, node)
            notes.append(f"{_ptr(node)}: subschema generated as any JSON")
            continue
        # independent failures under the root: widen its children cumulatively, then restore what can be
        trial, done = schema, []
        for c in _children(schema, ()):
            trial = _replaced(trial, c)
            done.append(c)
            if ok(trial):
                break
        else:
            return None
        for c in done[:-1]:
            restored = _replaced(trial, c, copy.deepcopy(_get(schema, c)))
            if ok(restored):
                trial = restored
            else:
                notes.append(f"{_ptr(c)}: subschema generated as any JSON")
        notes.append(f"{_ptr(done[-1])}: subschema generated as any JSON")
        schema = trial
    return schema if _compile_error(schema) is None else None


# --------------------------------------------------------------------------- check_schema


def check_schema(schema: Any) -> SchemaSupport:
    """Sort *schema* (dict, bool or pydantic model class) into exact / relaxed / refused."""
    try:
        s = normalize_schema(schema)
    except SchemaError as e:
        return SchemaSupport("refused", reason=e.message)
    return _check_cached(_key(s))


def _refused(reason: str) -> SchemaSupport:
    return SchemaSupport("refused", reason=reason)


def _iter_refs(s: Any) -> Any:
    if isinstance(s, dict):
        for k, v in s.items():
            if k in ("$ref", "$dynamicRef", "$recursiveRef") and isinstance(v, str):
                yield v
            elif k not in ("enum", "const", "default", "examples"):
                yield from _iter_refs(v)
    elif isinstance(s, list):
        for v in s:
            yield from _iter_refs(v)


def _has_ids(s: Any) -> bool:
    if isinstance(s, dict):
        return any((k in ("$id", "id") and isinstance(v, str)) or _has_ids(v) for k, v in s.items())
    if isinstance(s, list):
        return any(_has_ids(v) for v in s)
    return False


_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^[^#]")


@functools.lru_cache(maxsize=1024)
def _check_cached(key: str) -> SchemaSupport:
    import jsonschema

    s = json.loads(key)
    if s is True:
        return SchemaSupport("exact", grammar_schema={})
    if s is False:
        return _refused("the schema is `false`: no value satisfies it; use a satisfiable schema")
    cls = jsonschema.validators.validator_for(s)
    try:
        cls.check_schema(s)
    except jsonschema.SchemaError as e:
        where = "/" + "/".join(str(x) for x in e.absolute_path)
        return _refused(f"not a valid JSON Schema at {where}: {e.message}; fix the schema")
    refs = list(_iter_refs(s))
    if not _has_ids(s):
        remote = [r for r in refs if _REMOTE.match(r)]
        if remote:
            return _refused(
                f"remote $ref {remote[0]!r} (remote schemas are never fetched); "
                "inline the referenced schema under $defs and use a local '#/$defs/...' reference"
            )

    s = python_patterns(s)  # the grammar must read each regex as the validator does
    flags = _Flags()
    err = _compile_error(s) if "x-guidance" not in s else "x-guidance"
    relaxer = _Relaxer(cls, flags)
    relaxed = relaxer.node(s, "")
    changed = relaxed != s or relaxer.notes or relaxer.unenforced
    if err is None and not changed:
        return SchemaSupport("exact", grammar_schema=s)

    for _ in range(4):
        err = _compile_error(relaxed)
        if err is None:
            break
        lowered = err.lower()
        if "retriev" in lowered or "not present in a registry" in lowered:
            return _refused(
                f"a $ref cannot be resolved without fetching it ({err.splitlines()[0]}); "
                "inline the referenced schema under $defs"
            )
        if "does not exist" in lowered and "pointer" in lowered:
            return _refused(f"unresolvable $ref: {err.splitlines()[0]}; point it at an existing subschema")
        if "unsatisfiable" in lowered:
            return _refused(f"the schema is unsatisfiable: {err.splitlines()[0]}; no value can validate")
        new = _Flags(
            oneof_to_anyof=flags.oneof_to_anyof or "oneof" in lowered,
            drop_prop_counts=flags.drop_prop_counts or "min/maxproperties" in lowered,
            merge_pattern_props=flags.merge_pattern_props or "patternproperty" in lowered,
        )
        if new == flags:
            break
        flags = new
        relaxer = _Relaxer(cls, flags)
        relaxed = relaxer.node(s, "")

    unenforced = list(relaxer.unenforced)
    if err is not None:
        fb = _fallback(relaxed)
        if fb is None:
            return _refused(
                f"llguidance cannot compile this schema even after relaxation: {err.splitlines()[0]}; "
                "simplify the schema (fewer nested allOf/oneOf, simpler patterns)"
            )
        relaxed, fixes = fb
        unenforced += fixes
    unenforced = list(dict.fromkeys(unenforced))
    summary = (
        f"{len(unenforced)} constraint(s) not enforced by the grammar: outputs are validated "
        "against the original schema"
        if unenforced
        else "; ".join(relaxer.notes) or "schema rewritten"
    )
    return SchemaSupport("relaxed", tuple(unenforced), summary, relaxed)


# --------------------------------------------------------------------------- grammar


def _cap(s: Any, max_string: int | None, max_items: int | None) -> Any:
    """Add ``maxLength``/``maxItems`` caps where the schema leaves strings/arrays unbounded."""
    if isinstance(s, list):
        return [_cap(x, max_string, max_items) for x in s]
    if not isinstance(s, dict):
        return s
    out: dict[str, Any] = {}
    for k, v in s.items():
        if k in _DATA_KEYS:
            out[k] = v
        elif k in _SCHEMA_MAP_KEYS or k == "dependentSchemas":
            # maps of name -> sub-schema: the names are not keywords
            out[k] = {n: _cap(x, max_string, max_items) for n, x in v.items()} if isinstance(v, dict) else v
        else:
            out[k] = _cap(v, max_string, max_items)
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


@functools.lru_cache(maxsize=512)
def _grammar_cached(key: str, compact: bool, max_string: int | None, max_items: int | None) -> str:
    from llguidance import LLMatcher

    schema = json.loads(key)
    if max_string is not None or max_items is not None:
        schema = _cap(schema, max_string, max_items)
    opts = dict(GRAMMAR_OPTIONS)
    if not compact:
        opts.update(whitespace_flexible=True, item_separator=None, key_separator=None)
        opts = {k: v for k, v in opts.items() if v is not None}
    g = LLMatcher.grammar_from_json_schema(schema, overrides=opts)
    is_err, msgs = LLMatcher.validate_grammar_with_warnings(g)
    if is_err:
        raise SchemaError(
            f"llguidance cannot compile the schema: {msgs[0] if msgs else 'unknown error'}",
            hint="check it with edgeslm.decoding.schema.check_schema() first",
        )
    return g


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
    return _grammar_cached(_key(support.grammar_schema), compact, max_string, max_items)


# --------------------------------------------------------------------------- canonical JSON


def canonical_json(instance: Any, schema: Any) -> str:
    """Serialise *instance* the way the compact grammar emits it: declared properties first, in
    schema order, then the other ones; integral numbers without a fraction; raw Unicode."""
    s = normalize_schema(schema)
    return _Canon(s if isinstance(s, dict) else {}).dump(instance, [s])


class _Canon:
    def __init__(self, root: dict) -> None:
        self.root = root

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return None
        node: Any = self.root
        for part in ref[1:].split("/")[1:] if ref[1:] else []:
            part = _unesc(part)
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                return None
        return node

    def _matches(self, inst: Any, sub: Any) -> bool:
        import jsonschema

        try:
            wrapped = {k: v for k, v in self.root.items() if k in ("$defs", "definitions", "$schema")}
            wrapped["allOf"] = [sub]
            cls = jsonschema.validators.validator_for(self.root)
            return cls(wrapped).is_valid(inst)
        except Exception:
            return False

    def order(self, schemas: list, inst: dict) -> tuple[list[str], dict[str, list], list]:
        """Declared property order, per-property subschemas, and the additional-property schemas."""
        props: list[str] = []
        req: list[str] = []
        subs: dict[str, list] = {}
        extra: list = []
        seen: set[int] = set()

        def walk(s: Any, depth: int = 0) -> None:
            if not isinstance(s, dict) or depth > 30 or id(s) in seen:
                return
            seen.add(id(s))
            for k, v in s.items():
                if k == "properties" and isinstance(v, dict):
                    for n, x in v.items():
                        if n not in props:
                            props.append(n)
                        subs.setdefault(n, []).append(x)
                elif k == "required" and isinstance(v, list):
                    req.extend(n for n in v if isinstance(n, str) and n not in req)
                elif k == "$ref" and isinstance(v, str):
                    walk(self.resolve(v), depth + 1)
                elif k == "allOf" and isinstance(v, list):
                    for x in v:
                        walk(x, depth + 1)
                elif k in ("anyOf", "oneOf") and isinstance(v, list):
                    for x in v:
                        if self._matches(inst, x):
                            walk(x, depth + 1)
                            break
                elif k in ("additionalProperties", "patternProperties"):
                    extra.append((k, v))
            seen.discard(id(s))

        for s in schemas:
            walk(s)
        return props + [r for r in req if r not in props], subs, extra

    def literal(self, schemas: list, inst: Any) -> Any:
        for s in schemas:
            if isinstance(s, dict):
                if "$ref" in s:
                    r = self.literal([self.resolve(s["$ref"])], inst)
                    if r is not None:
                        return r
                if "const" in s and s["const"] == inst:
                    return s["const"]
                for e in s.get("enum", []) if isinstance(s.get("enum"), list) else []:
                    if e == inst and type(e) is type(inst):
                        return e
        return None

    def dump(self, inst: Any, schemas: list) -> str:
        if isinstance(inst, (dict, list)):
            lit = self.literal(schemas, inst)
            if lit is not None:
                return self.dump(lit, [])
        if isinstance(inst, dict):
            order, subs, extra = self.order(schemas, inst)
            keys = [k for k in order if k in inst] + [k for k in inst if k not in subs and k not in order]
            parts = []
            for k in keys:
                sub = subs.get(k) or self.extra_schemas(extra, k)
                parts.append(self.dump_str(k) + ":" + self.dump(inst[k], sub))
            return "{" + ",".join(parts) + "}"
        if isinstance(inst, list):
            return "[" + ",".join(self.dump(x, self.item_schemas(schemas, i)) for i, x in enumerate(inst)) + "]"
        if isinstance(inst, str):
            return self.dump_str(inst)
        if isinstance(inst, float) and math.isfinite(inst) and inst.is_integer():
            return str(int(inst))
        return json.dumps(inst)

    @staticmethod
    def dump_str(s: str) -> str:
        return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")

    @staticmethod
    def extra_schemas(extra: list, key: str) -> list:
        out = []
        for kind, v in extra:
            if kind == "patternProperties" and isinstance(v, dict):
                out += [x for p, x in v.items() if _search(p, key)]
        if not out:
            out = [v for kind, v in extra if kind == "additionalProperties"]
        return out

    def item_schemas(self, schemas: list, i: int) -> list:
        out: list = []

        def walk(s: Any, depth: int = 0) -> None:
            if not isinstance(s, dict) or depth > 30:
                return
            prefix = s.get("prefixItems")
            items = s.get("items")
            if isinstance(items, list):
                prefix, items = items, s.get("additionalItems")
            if isinstance(prefix, list) and i < len(prefix):
                out.append(prefix[i])
            elif items is not None:
                out.append(items)
            if isinstance(s.get("$ref"), str):
                walk(self.resolve(s["$ref"]), depth + 1)
            for x in s.get("allOf", []) if isinstance(s.get("allOf"), list) else []:
                walk(x, depth + 1)

        for s in schemas:
            walk(s)
        return out


def _search(pattern: str, key: str) -> bool:
    try:
        return re.search(pattern, key) is not None
    except re.error:
        return False
