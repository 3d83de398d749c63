"""The shortest valid value of a schema: a lower bound on its length, or infinity when recursion
leaves no finite value valid (``{"$ref": "#"}``, a required property of the object's own type)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from .normalize import MISSING, resolve_pointer

__all__ = ["shortest_length"]


def shortest_length(schema: Any, *, ref_overrides: bool, has_ids: bool, tick: Callable[[], None]) -> float:
    """A lower bound on the length (characters of compact JSON) of any value valid under *schema*;
    ``math.inf`` when none is finite. *ref_overrides*: keywords beside ``$ref`` are ignored (drafts
    3-7); *has_ids*: the schema has ``$id``\\s, so local pointers are not resolved; *tick* is called
    once a round of the fixed-point search, and may raise to stop it."""
    return _Shortest(schema, ref_overrides, has_ids, tick).length()


class _Shortest:
    """The search behind :func:`shortest_length`.

    Keywords that only narrow the set of values (``pattern``, ``not``...) are ignored, so the bound
    holds for any draft. Local ``$ref`` targets are solved together: each starts at infinity and
    is lowered, round after round, until nothing changes (the least fixed point)."""

    def __init__(self, root: Any, ref_overrides: bool, has_ids: bool, tick: Callable[[], None]) -> None:
        self.root = root
        self.ref_overrides = ref_overrides  # drafts 3-7: keywords beside $ref are ignored
        self.has_ids = has_ids  # "#/..." may then be relative to a nested $id: not resolved
        self.values: dict[str, float] = {}
        self.targets: dict[str, Any] = {}
        self.depth = 0
        self.tick = tick  # called once a round: raises to stop the search

    def length(self) -> float:
        result = self.min(self.root)  # targets are first solved depth-first, as they are reached
        for _ in range(64):
            self.tick()
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
            node = resolve_pointer(self.root, ref)
            if node is MISSING:
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


def _count(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else 0


def _json_len(v: Any) -> int:
    return len(json.dumps(v, separators=(",", ":"), ensure_ascii=False))
