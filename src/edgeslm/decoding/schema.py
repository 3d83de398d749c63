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
    schema, or one that llguidance cannot compile even after relaxation. Also refused, so that no
    schema can make the check or the generation run without end: a schema of more than
    :data:`MAX_SCHEMA_CHARS` characters or :data:`MAX_SCHEMA_DEPTH` levels of nesting, one whose
    check takes longer than :data:`CHECK_TIME_LIMIT_S`, one no finite value satisfies (a
    ``$ref`` cycle without a way out: ``{"$ref": "#"}``, a required property of its own type...),
    and one whose shortest valid value is longer than :data:`MAX_MIN_CHARS` characters
    (``"minLength": 1000000000``).

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

import contextvars
import functools
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from .._errors import SchemaError
from ._regex import BoundedValidator, bounded_class
from ._regex import search as _bounded_search

__all__ = [
    "CHECK_TIME_LIMIT_S",
    "GRAMMAR_OPTIONS",
    "MAX_MIN_CHARS",
    "MAX_SCHEMA_CHARS",
    "MAX_SCHEMA_DEPTH",
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

#: Longest schema accepted, in characters of compact JSON (checking a schema validates it against
#: its meta-schema: about 2-4 s for 500,000 characters on a slow 2-core machine).
MAX_SCHEMA_CHARS = 500_000
#: Deepest nesting of JSON objects and arrays in a schema (llguidance's parser stops at 128).
MAX_SCHEMA_DEPTH = 128
#: Seconds :func:`check_schema` may spend compiling and relaxing a schema before it refuses it
#: (one compilation in progress is finished first; meta-schema validation counts too).
CHECK_TIME_LIMIT_S = 5.0
#: Longest that the shortest valid value of a schema may be, in characters of JSON.
MAX_MIN_CHARS = 100_000

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


def _key(schema: Any) -> str:
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


# --------------------------------------------------------------------------- llguidance compile


class _OutOfTime(Exception):
    """The check of one schema passed :data:`CHECK_TIME_LIMIT_S`."""


#: Deadline (``time.monotonic()``) of the schema check running in this context, if any.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("edgeslm_schema_deadline", default=None)


def _check_time() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise _OutOfTime


def _compile_error(schema: dict, options: tuple[tuple[str, Any], ...] = ()) -> str | None:
    """Compile with llguidance; ``None`` when it compiles without error or warning."""
    from llguidance import LLMatcher

    _check_time()

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
    """A copy of *s* with the node at *path* replaced by *value* (``{}``, any JSON, by default).

    Only the containers along the path are copied; everything else is shared, and never mutated."""
    return _edited(s, path, lambda parent, key: parent.__setitem__(key, {} if value is None else value))


def _without(s: dict, path: tuple, key: str) -> dict:
    """A copy of *s* without keyword *key* in the node at *path* (path copying, as :func:`_replaced`)."""
    return _edited(s, (*path, key), lambda parent, k: parent.pop(k))


def _edited(s: dict, path: tuple, edit: Any) -> dict:
    root: Any = dict(s)
    node = root
    for p in path[:-1]:
        child = node[p]
        child = dict(child) if isinstance(child, dict) else list(child)
        node[p] = child
        node = child
    edit(node, path[-1])
    return root  # type: ignore[no-any-return]


def _ptr(path: tuple) -> str:
    return "/" + "/".join(_esc(str(x)) for x in path)


# removing these could make a sibling keyword stricter (additionalProperties, items, additionalItems)
_NOT_DROPPABLE = frozenset({"properties", "patternProperties", "prefixItems", "items", "$defs", "definitions"})


def _fallback(schema: dict, budget: int = 400) -> tuple[dict, list[str]] | None:
    """Widen the schema until llguidance compiles it; ``None`` if only replacing the root would do,
    or when *budget* compilations did not find a way (the check's deadline also applies).

    Descends while replacing one subschema with ``{}`` (any JSON) fixes everything, then prefers
    dropping a single keyword of that node to replacing the node. Every step only widens."""
    notes: list[str] = []

    def ok(s: dict) -> bool:
        nonlocal budget
        if budget <= 0:
            return False
        budget -= 1
        return _compile_error(s) is None

    for _ in range(25):
        if ok(schema):
            return schema, notes
        if budget <= 0:
            return None
        node: tuple = ()
        while budget > 0:
            kids = _children(_get(schema, node), node)
            fix = next((c for c in kids if budget > 0 and ok(_replaced(schema, c))), None)
            if fix is None:
                break
            node = fix
        if budget <= 0:
            return None
        here = _get(schema, node)
        dropped = False
        for k in list(here) if isinstance(here, dict) else []:
            if k in _NOT_DROPPABLE or k not in ENFORCED:
                continue
            trial = _without(schema, node, k)
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
            if budget <= 0:
                return None
            trial = _replaced(trial, c)
            done.append(c)
            if ok(trial):
                break
        else:
            return None
        for c in done[:-1]:
            restored = _replaced(trial, c, _get(schema, c))
            if ok(restored):
                trial = restored
            else:
                notes.append(f"{_ptr(c)}: subschema generated as any JSON")
        notes.append(f"{_ptr(done[-1])}: subschema generated as any JSON")
        schema = trial
    return schema if ok(schema) else None


# --------------------------------------------------------------------------- shortest valid value


class _Shortest:
    """A lower bound on the length (characters of compact JSON) of any value valid under a schema;
    ``math.inf`` when no finite value is valid because of recursion (``{"$ref": "#"}``).

    Keywords that only narrow the set of values (``pattern``, ``not``...) are ignored, so the bound
    holds for any draft. Local ``$ref`` targets are solved together: each starts at infinity and
    is lowered, round after round, until nothing changes (the least fixed point)."""

    def __init__(self, root: Any, ref_overrides: bool, has_ids: bool) -> None:
        self.root = root
        self.ref_overrides = ref_overrides  # drafts 3-7: keywords beside $ref are ignored
        self.has_ids = has_ids  # "#/..." may then be relative to a nested $id: not resolved
        self.values: dict[str, float] = {}
        self.targets: dict[str, Any] = {}
        self.depth = 0

    def length(self) -> float:
        result = self.min(self.root)  # targets are first solved depth-first, as they are reached
        for _ in range(64):
            _check_time()
            known = len(self.targets)
            changed = False
            for ref, node in list(self.targets.items()):
                v = self.min(node)
                if v < self.values[ref]:
                    self.values[ref] = v
                    changed = True
            result = self.min(self.root)
            if not changed and len(self.targets) == known:
                return result
        return 0.0  # not settled: claim nothing

    def ref(self, ref: str) -> float:
        if self.has_ids or not ref.startswith("#") or (len(ref) > 1 and not ref.startswith("#/")):
            return 1.0  # anchors, relative and remote references: unknown, so claim nothing
        if ref not in self.targets:
            node = _resolve(self.root, ref)
            if node is _MISSING:
                return 1.0
            self.targets[ref] = node
            self.values[ref] = math.inf  # while it is being solved: a cycle back to it has no way out
            if self.depth < 32:
                self.depth += 1
                self.values[ref] = self.min(node)
                self.depth -= 1
        return self.values[ref]

    def min(self, s: Any) -> float:
        if s is True:
            return 1.0
        if s is False:
            return math.inf
        if not isinstance(s, dict):
            return 1.0
        bounds: list[float] = []
        if isinstance(s.get("$ref"), str):
            bounds.append(self.ref(s["$ref"]))
            if self.ref_overrides:
                return bounds[0]
        if "const" in s:
            bounds.append(_json_len(s["const"]))
        if isinstance(s.get("enum"), list) and s["enum"]:
            bounds.append(min(_json_len(e) for e in s["enum"]))
        if isinstance(s.get("allOf"), list):
            bounds.extend(self.min(x) for x in s["allOf"])
        for k in ("anyOf", "oneOf"):
            if isinstance(s.get(k), list) and s[k]:
                bounds.append(min(self.min(x) for x in s[k]))
        t = s.get("type")
        types = [x for x in t if isinstance(x, str)] if isinstance(t, list) else [t] if isinstance(t, str) else []
        if types:
            bounds.append(min(self.of_type(s, x) for x in types))
        return max(bounds, default=1.0)

    def of_type(self, s: dict, kind: str) -> float:
        if kind == "string":
            return 2.0 + _count(s.get("minLength"))
        if kind in ("boolean", "null"):
            return 4.0
        if kind == "object":
            props = s.get("properties") if isinstance(s.get("properties"), dict) else {}
            required = [r for r in dict.fromkeys(s.get("required") or []) if isinstance(r, str)]
            extra = s.get("additionalProperties")
            total = 2.0 + max(0, len(required) - 1)
            for name in required:
                sub = props[name] if name in props else (extra if isinstance(extra, dict) else True)
                total += _json_len(name) + 1 + self.min(sub)
            more = _count(s.get("minProperties")) - len(required)
            return total + 5.0 * more if more > 0 else total
        if kind == "array":
            prefix = s.get("prefixItems", s.get("items") if isinstance(s.get("items"), list) else [])
            prefix = prefix if isinstance(prefix, list) else []
            rest = s.get("items") if not isinstance(s.get("items"), list) else s.get("additionalItems")
            n = _count(s.get("minItems"))
            if n == 0:
                return 2.0
            head = prefix[:n]
            total = 2.0 + (n - 1) + sum(self.min(x) for x in head)
            if n > len(head):
                total += (n - len(head)) * self.min(rest if rest is not None else True)
            return total
        return 1.0  # number, integer, unknown types


_MISSING = object()


def _resolve(root: Any, ref: str) -> Any:
    """The node a local JSON-pointer ``$ref`` (``#``, ``#/$defs/a``) points at; ``_MISSING`` when none;
    the root for other fragments (anchors), which are not resolved here."""
    from urllib.parse import unquote

    if not ref.startswith("#/"):
        return root
    node = root
    for part in ref[2:].split("/"):
        part = _unesc(unquote(part))
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _count(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else 0


def _json_len(v: Any) -> int:
    return len(json.dumps(v, separators=(",", ":"), ensure_ascii=False))


# --------------------------------------------------------------------------- check_schema


def check_schema(schema: Any) -> SchemaSupport:
    """Sort *schema* (dict, bool or pydantic model class) into exact / relaxed / refused.

    Bounded on any input: schemas over :data:`MAX_SCHEMA_CHARS` characters or
    :data:`MAX_SCHEMA_DEPTH` levels are refused at once, and a check that passes
    :data:`CHECK_TIME_LIMIT_S` stops and refuses the schema, with the reason."""
    try:
        s = normalize_schema(schema)
    except SchemaError as e:
        return SchemaSupport("refused", reason=f"{e.message}; {e.hint}" if e.hint else e.message)
    import jsonschema  # noqa: F401  (its first import takes seconds: not part of the time limit)

    token = _DEADLINE.set(time.monotonic() + CHECK_TIME_LIMIT_S)
    try:
        return _check_cached(_key(s))
    except _OutOfTime:  # not cached: a later check on a less busy machine may finish
        return _refused(
            f"checking this schema took more than {CHECK_TIME_LIMIT_S:g} s (the limit of check_schema); "
            "simplify it (fewer properties, fewer nested allOf/anyOf/oneOf, simpler patterns)"
        )
    except RecursionError:
        return _refused("the schema is nested too deeply to be checked; flatten it with $defs and $ref")
    finally:
        _DEADLINE.reset(token)


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
    _check_time()
    refs = list(_iter_refs(s))
    has_ids = _has_ids(s)
    if not has_ids:
        remote = [r for r in refs if _REMOTE.match(r)]
        if remote:
            return _refused(
                f"remote $ref {remote[0]!r} (remote schemas are never fetched); "
                "inline the referenced schema under $defs and use a local '#/$defs/...' reference"
            )
        missing = next((r for r in refs if r.startswith("#") and _resolve(s, r) is _MISSING), None)
        if missing is not None:
            return _refused(f"unresolvable $ref {missing!r}: nothing in the schema is at that pointer; "
                            "point it at an existing subschema")
    shortest = _Shortest(s, cls.__name__ in _DRAFTS_REF_OVERRIDES, has_ids).length()
    if shortest == math.inf:
        return _refused(
            "no finite JSON value satisfies this schema: it requires a value that contains itself without "
            "end (a $ref cycle with no way out, such as {'$ref': '#'}, or a required property of the "
            "object's own type); give the recursion a way out (an optional property, an anyOf with a "
            "non-recursive branch)"
        )
    if shortest > MAX_MIN_CHARS:
        return _refused(
            f"the shortest value this schema allows is {int(shortest):,} characters of JSON (minLength, "
            f"minItems, minProperties...), more than the {MAX_MIN_CHARS:,} a generation can write; "
            "lower those minimums"
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
        if "too large" in lowered or "too complex" in lowered:
            return _refused(
                f"the schema is beyond the grammar engine's size limits ({err.splitlines()[0]}); split it, "
                "or remove properties and alternatives"
            )
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
            cls = bounded_class(jsonschema.validators.validator_for(self.root))
            return BoundedValidator(cls(wrapped)).is_valid(inst)
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
    return _bounded_search(pattern, key) is True
