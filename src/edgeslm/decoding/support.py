"""What a grammar can promise for a JSON Schema: classification, relaxation and the compile search.

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
    every output against the original schema (:func:`~edgeslm.decoding.normalize.make_validator`)
    and retry.
``refused``
    Not valid JSON Schema, a remote or unresolvable ``$ref`` (never fetched), an unsatisfiable
    schema, or one that llguidance cannot compile even after relaxation. Also refused, so that no
    schema can make the check or the generation run without end: a schema of more than
    :data:`~edgeslm.decoding.normalize.MAX_SCHEMA_CHARS` characters or
    :data:`~edgeslm.decoding.normalize.MAX_SCHEMA_DEPTH` levels of nesting, one whose
    check takes longer than :data:`CHECK_TIME_LIMIT_S`, one no finite value satisfies (a
    ``$ref`` cycle without a way out: ``{"$ref": "#"}``, a required property of its own type...),
    and one whose shortest valid value is longer than :data:`MAX_MIN_CHARS` characters
    (``"minLength": 1000000000``).

A compile error of llguidance is read by its text (:data:`ERROR_KINDS`): a refusal, or which
relaxation to try next; ``tests/test_schema.py`` pins that text for the llguidance version tested.

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
  ``jsonschema``) is Unicode-aware. ``tests/_canonical.py`` writes an instance the way the
  grammar emits it.

Over ~450 lines on purpose: it is the table of JSON Schema keywords and how each is enforced,
relaxed or refused; splitting it would separate a keyword's rule from its siblings'.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from .._errors import SchemaError
from ._regex import python_patterns
from .narrow import DATA_KEYS, SCHEMA_LIST_KEYS, SCHEMA_MAP_KEYS, SCHEMA_ONE_KEYS
from .normalize import MISSING, escape_pointer, normalize_schema, resolve_pointer, schema_key
from .shortest import shortest_length

__all__ = [
    "CHECK_TIME_LIMIT_S",
    "ENFORCED",
    "ERROR_KINDS",
    "GRAMMAR_OPTIONS",
    "LLG_FORMATS",
    "MAX_MIN_CHARS",
    "NOT_ENFORCED",
    "PATTERN_LENGTH_LIMIT",
    "SchemaSupport",
    "check_schema",
    "error_kinds",
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


# --------------------------------------------------------------------------- compile errors

#: How :func:`check_schema` reads a compile error of llguidance: by its text, lower-cased. Each
#: kind matches when every fragment of one of its alternatives occurs in the text. The first four
#: refuse the schema (the first that matches gives the reason); the last three each switch on one
#: relaxation. llguidance's wording is pinned by ``tests/test_schema.py::test_llguidance_error_texts``.
ERROR_KINDS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("remote_ref", (("retriev",), ("not present in a registry",))),
    ("missing_ref", (("does not exist", "pointer"),)),
    ("unsatisfiable", (("unsatisfiable",),)),
    ("too_large", (("too large",), ("too complex",))),
    ("one_of", (("oneof",),)),
    ("prop_counts", (("min/maxproperties",),)),
    ("pattern_props", (("patternproperty",),)),
)

#: The reason given for each refusing kind (``{err}``: the first line of the error).
_REFUSALS = {
    "remote_ref": "a $ref cannot be resolved without fetching it ({err}); inline the referenced schema under $defs",
    "missing_ref": "unresolvable $ref: {err}; point it at an existing subschema",
    "unsatisfiable": "the schema is unsatisfiable: {err}; no value can validate",
    "too_large": "the schema is beyond the grammar engine's size limits ({err}); split it, "
    "or remove properties and alternatives",
}


def error_kinds(err: str) -> list[str]:
    """The kinds of :data:`ERROR_KINDS` that the compile error *err* matches, in table order."""
    low = err.lower()
    return [kind for kind, alts in ERROR_KINDS if any(all(f in low for f in alt) for alt in alts)]


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
            p = f"{path}/{escape_pointer(k)}"
            if k == "x-guidance":
                self.notes.append(f"{path or '/'}: x-guidance options ignored")
                continue
            if k in DATA_KEYS:
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
                out["x-edgeslm-pp"] = [self.node(x, f"{p}/{escape_pointer(n)}") for n, x in v.items()]
            elif k in SCHEMA_MAP_KEYS and isinstance(v, dict):
                out[k] = {n: self.node(x, f"{p}/{escape_pointer(n)}") for n, x in v.items()}
            elif k in SCHEMA_LIST_KEYS and isinstance(v, list):
                if k == "allOf" and isinstance(out.get("allOf"), list):
                    out["allOf"] = out["allOf"] + [self.node(x, f"{p}/{i}") for i, x in enumerate(v)]
                else:
                    out[k] = [self.node(x, f"{p}/{i}") for i, x in enumerate(v)]
            elif k == "items":
                if isinstance(v, list):
                    out[k] = [self.node(x, f"{p}/{i}") for i, x in enumerate(v)]
                else:
                    out[k] = self.node(v, p)
            elif k in SCHEMA_ONE_KEYS:
                out[k] = self.node(v, p)
            elif k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    kind = "number" if _may_be(s, "number") else "integer"
                    if not _number_ok(schema_key({"type": kind, k: v})):
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


# --------------------------------------------------------------------------- fallback: any JSON


def _children(s: Any, path: tuple) -> list[tuple]:
    """Paths (tuples of keys) of the direct subschemas of the node at *path*."""
    if not isinstance(s, dict):
        return []
    out: list[tuple] = []
    for k, v in s.items():
        if k in SCHEMA_MAP_KEYS and isinstance(v, dict):
            out += [(*path, k, n) for n in v]
        elif (k in SCHEMA_LIST_KEYS or k == "items") and isinstance(v, list):
            out += [(*path, k, i) for i in range(len(v))]
        elif k in SCHEMA_ONE_KEYS and isinstance(v, dict):
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
    return "/" + "/".join(escape_pointer(str(x)) for x in path)


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


# --------------------------------------------------------------------------- check_schema


def check_schema(schema: Any) -> SchemaSupport:
    """Sort *schema* (dict, bool or pydantic model class) into exact / relaxed / refused.

    Bounded on any input: schemas over :data:`~edgeslm.decoding.normalize.MAX_SCHEMA_CHARS`
    characters or :data:`~edgeslm.decoding.normalize.MAX_SCHEMA_DEPTH` levels are refused at once,
    and a check that passes :data:`CHECK_TIME_LIMIT_S` stops and refuses the schema, with the
    reason. Results are cached; each call returns its own copy, so mutating one (its
    ``grammar_schema``) changes no later result."""
    try:
        s = normalize_schema(schema)
    except SchemaError as e:
        return SchemaSupport("refused", reason=f"{e.message}; {e.hint}" if e.hint else e.message)
    import jsonschema  # noqa: F401  (its first import takes seconds: not part of the time limit)

    token = _DEADLINE.set(time.monotonic() + CHECK_TIME_LIMIT_S)
    try:
        support, text = _check_cached(schema_key(s))
    except _OutOfTime:  # not cached: a later check on a less busy machine may finish
        return _refused(
            f"checking this schema took more than {CHECK_TIME_LIMIT_S:g} s (the limit of check_schema); "
            "simplify it (fewer properties, fewer nested allOf/anyOf/oneOf, simpler patterns)"
        )
    except RecursionError:
        return _refused("the schema is nested too deeply to be checked; flatten it with $defs and $ref")
    finally:
        _DEADLINE.reset(token)
    # the caller's own copy of the grammar schema: mutating it cannot reach the cache
    return support if text is None else dataclasses.replace(support, grammar_schema=json.loads(text))


def _refused(reason: str) -> SchemaSupport:
    return SchemaSupport("refused", reason=reason)


def _iter_refs(s: Any) -> Any:
    if isinstance(s, dict):
        for k, v in s.items():
            if k in ("$ref", "$dynamicRef", "$recursiveRef") and isinstance(v, str):
                yield v
            elif k not in DATA_KEYS:
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
def _check_cached(key: str) -> tuple[SchemaSupport, str | None]:
    """The support of the schema *key* without its grammar schema, and that schema as JSON text:
    what the cache holds cannot be mutated (each caller gets a copy built from the text)."""
    support = _check(key)
    if support.grammar_schema is None:
        return support, None
    return dataclasses.replace(support, grammar_schema=None), schema_key(support.grammar_schema)


def _check(key: str) -> SchemaSupport:
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
        missing = next((r for r in refs if r.startswith("#") and resolve_pointer(s, r) is MISSING), None)
        if missing is not None:
            return _refused(f"unresolvable $ref {missing!r}: nothing in the schema is at that pointer; "
                            "point it at an existing subschema")
    ref_overrides = cls.__name__ in _DRAFTS_REF_OVERRIDES
    shortest = shortest_length(s, ref_overrides=ref_overrides, has_ids=has_ids, tick=_check_time)
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
        kinds = error_kinds(err)
        refusal = next((k for k in kinds if k in _REFUSALS), None)
        if refusal is not None:
            return _refused(_REFUSALS[refusal].format(err=err.splitlines()[0]))
        new = _Flags(
            oneof_to_anyof=flags.oneof_to_anyof or "one_of" in kinds,
            drop_prop_counts=flags.drop_prop_counts or "prop_counts" in kinds,
            merge_pattern_props=flags.merge_pattern_props or "pattern_props" in kinds,
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


