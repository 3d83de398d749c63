"""Test helper: an instance written the way the compact grammar emits it (moved from
``edgeslm.decoding.schema``, which used it nowhere)."""

from __future__ import annotations

import json
import math
from typing import Any

from edgeslm.decoding._regex import BoundedValidator, bounded_class, search
from edgeslm.decoding.normalize import normalize_schema, unescape_pointer

__all__ = ["canonical_json"]


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
            part = unescape_pointer(part)
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
    return search(pattern, key) is True
