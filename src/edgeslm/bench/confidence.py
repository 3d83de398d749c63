"""Confidence on outside data: does ``Extraction.confidence`` rank right answers above wrong ones on
extraction tasks edgeslm's authors did not write? (``python -m edgeslm.bench --only confidence``)

Datasets, built from the conformance corpora in ``shared/conformance/`` beside the project (read in
place, never copied), each a deterministic sample (by hash of id):

* ``bfcl_simple`` and ``bfcl_multiple``: BFCL v4 ``simple_python`` and ``multiple`` questions. The
  text is the user's question, the schema the ground-truth function's parameters as JSON Schema (its
  description on top), and an answer is right when BFCL's AST checker accepts the extracted
  arguments as a call of that function (:func:`edgeslm.bench.bfcl.call_matches`: required arguments
  present, no unknown ones, each value among the accepted ones, ``""`` meaning an optional one may
  be left out). Questions whose own accepted answer the checker rejects (a ground truth that
  contradicts its schema) are left out.
* ``jsonschemabench``: JSONSchemaBench schemas that edgeslm's grammar enforces exactly, each with a
  small valid instance from the corpus (at most 8 scalar leaves, nested at most 3 deep, no empty
  value). The text renders the instance as ``field name: value`` lines (keys split into words,
  nested paths joined with `` / ``, list items numbered, booleans as yes/no), not as JSON; right
  when the extraction equals the instance (:func:`edgeslm.api.calibrate.fields_match`: strings
  without regard to case and spacing, numbers to 1e-6, a missing key the same as ``null``).
* ``bfcl_parallel`` (not in the default run: the bundled models get 0-4 % of it right, so its
  AUROC says nothing, at 4 s an item): BFCL v4 ``parallel``, one function called several times,
  as ``{"calls": [arguments, ...]}``; right when the calls match the accepted ones one to one, in
  any order.

Each item is extracted once, greedy, ``retries=0`` (so a score always belongs to the greedy
answer), with ``max_tokens=512``. An output that loops, or is still running at 60 % of the
budget, is steered to close and every score of it is capped at 0.5
(:data:`edgeslm.decoding.scores.STEERED_CAP`), as in ``extract``. The budget matters for that
cap: with 128 tokens, BFCL answers of 77-128 tokens that ``extract``'s default budget (2048) leaves
alone get capped, which flattered ``mean_prob`` in a trial (gemma-3-270m, 60-80 BFCL questions:
AUROC 0.75 at 128 tokens, 0.62 at the default budget). At 512 only loops and rare long runaways
are steered, as with the default budget (2 of 120 default-budget outputs ran past 307 tokens).

For every score (``confidence``, what ``extract`` returns, and each candidate of
:data:`edgeslm.decoding.scores.CANDIDATES`) the section reports, per dataset, the AUROC for
"right" among the answers that validated, and the ECE of the raw score read as a probability (10
equal-mass bins, :func:`edgeslm.escalation.calibration.ece`), on all items and on each half of a fixed
split: ``select`` (even positions of the sample) and ``heldout`` (odd). :func:`choose` picks the
candidate with the best mean AUROC on the ``select`` half over every dataset and model, and reports
its AUROC on the ``heldout`` half, which played no part in the choice.

Over ~450 lines on purpose: one benchmark section: the outside datasets turned into extraction
tasks, every candidate score and its report, read together.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DATASETS", "SCORES", "Item", "bfcl_items", "bfcl_parallel_items", "build", "choose",
           "confidence_bench", "jsonschemabench_items", "run_items", "summarize"]

DATASETS = ("bfcl_simple", "bfcl_multiple", "jsonschemabench")
EXTRA_DATASETS = ("bfcl_parallel",)  # built on request only: 0-4 % right for the bundled models, 4 s an item
DEFAULT_N = 80
QUICK_N = 12
SPLITS = ("all", "select", "heldout")
ECE_BINS = 10
# as good as extract's default budget (min(2048, context left)) for the score: runaways are steered by
# the repetition check long before 307 tokens (60 %), and a right answer here is under 130 tokens
MAX_TOKENS = 512
MIN_CLASS = 5  # a dataset's AUROC counts in choose() when its split has this many right and wrong answers


def _scores() -> tuple[str, ...]:
    from ..decoding.scores import CANDIDATES

    return ("confidence", *CANDIDATES)


SCORES = _scores()


@dataclass
class Item:
    """One extraction task with its correctness oracle."""

    dataset: str
    id: str
    text: str
    schema: dict[str, Any]
    gold: Any  # one right answer (the oracle accepts it)
    judge: Callable[[Any], bool] = field(repr=False)
    max_tokens: int = 192

    def right(self, data: Any) -> bool:
        """Whether *data* is a right answer."""
        try:
            return bool(self.judge(data))
        except (TypeError, AttributeError, ValueError):
            return False


def _rank(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# ------------------------------------------------------------------------------------------ BFCL


def _gold(accepted: Any) -> Any:
    """One value BFCL's checker accepts, from an accepted-value structure (dicts hold option lists)."""
    if isinstance(accepted, dict):
        out = {}
        for k, opts in accepted.items():
            opts = opts if isinstance(opts, list) else [opts]
            chosen = [o for o in opts if o != "" and o is not None]
            if chosen:  # else only "" (may be left out) or null is accepted: left out
                out[k] = _gold(chosen[0])
        return out
    if isinstance(accepted, list):
        return [_gold(v) for v in accepted]
    return accepted


def _servable(schema: Any) -> bool:
    from ..decoding.support import check_schema

    try:
        return check_schema(schema).level != "refused"
    except Exception:  # a schema the checker chokes on is simply not part of the sample
        return False


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    from .bfcl import to_json_schema

    schema = to_json_schema(function.get("parameters") or {"type": "dict"})
    if not isinstance(schema, dict):
        schema = {"type": "object"}
    schema.setdefault("type", "object")
    return schema


def _question(q: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in q["question"][0] if m.get("role") == "user")


def bfcl_items(n: int, root: Path | None = None, category: str = "simple_python") -> list[Item]:
    """*n* BFCL questions of *category* (``simple_python`` or ``multiple``) as extractions."""
    from .bfcl import call_matches, load

    pool = []
    dataset = "bfcl_simple" if category == "simple_python" else f"bfcl_{category}"
    for q in load(category, root=root):
        gt = q.get("ground_truth") or []
        if len(gt) != 1:
            continue
        (name, params), = gt[0].items()
        fn = next((f for f in q["function"] if f["name"] == name), None)
        if fn is None:
            continue
        schema = _parameters(fn)
        if fn.get("description"):
            schema = {"description": f"The arguments of {name}: {fn['description']}", **schema}
        if not _servable(schema):
            continue

        def judge(data: Any, name: str = name, gt: dict[str, Any] = gt[0], fns: Any = q["function"]) -> bool:
            return isinstance(data, dict) and call_matches((name, data), gt, fns)

        item = Item(dataset, q["id"], _question(q), schema, _gold(params), judge, MAX_TOKENS)
        if item.right(item.gold):  # else the ground truth contradicts its own schema: left out
            pool.append(item)
    pool.sort(key=lambda it: _rank(it.id))
    return pool[:n]


def _perfect_matching(ok: list[list[bool]]) -> bool:
    """Whether every row can be paired with its own column where ``ok`` (square matrix)."""
    n = len(ok)
    match: list[int] = [-1] * n  # column -> row

    def augment(r: int, seen: list[bool]) -> bool:
        for c in range(n):
            if ok[r][c] and not seen[c]:
                seen[c] = True
                if match[c] < 0 or augment(match[c], seen):
                    match[c] = r
                    return True
        return False

    return all(augment(r, [False] * n) for r in range(n))


def bfcl_parallel_items(n: int, root: Path | None = None) -> list[Item]:
    """*n* BFCL ``parallel`` questions as extractions of ``{"calls": [...]}`` (any order)."""
    from .bfcl import call_matches, load

    pool = []
    for q in load("parallel", root=root):
        gt = q.get("ground_truth") or []
        names = {next(iter(g)) for g in gt}
        if len(q["function"]) != 1 or len(names) != 1 or not 2 <= len(gt) <= 6:
            continue
        fn = q["function"][0]
        name = fn["name"]
        if name not in names:
            continue
        schema = {
            "type": "object",
            "description": f"Every call of {name} the user asks for: {fn.get('description', '')}".strip(),
            "properties": {"calls": {"type": "array", "items": _parameters(fn), "minItems": 1,
                                     "description": f"the arguments of each call of {name}, one entry per call"}},
            "required": ["calls"],
        }
        if not _servable(schema):
            continue

        def judge(data: Any, name: str = name, gt: list[Any] = gt, fns: Any = q["function"]) -> bool:
            calls = data.get("calls") if isinstance(data, dict) else None
            if not isinstance(calls, list) or len(calls) != len(gt):
                return False
            ok = [[isinstance(c, dict) and call_matches((name, c), g, fns) for g in gt] for c in calls]
            return _perfect_matching(ok)

        gold = {"calls": [_gold(g[name]) for g in gt]}
        item = Item("bfcl_parallel", q["id"], _question(q), schema, gold, judge, MAX_TOKENS)
        if item.right(item.gold):  # else the ground truth contradicts its own schema: left out
            pool.append(item)
    pool.sort(key=lambda it: _rank(it.id))
    return pool[:n]


# ------------------------------------------------------------------------------- JSONSchemaBench


def _leaves(v: Any) -> int:
    if isinstance(v, dict):
        return sum(_leaves(x) for x in v.values())
    if isinstance(v, list):
        return sum(_leaves(x) for x in v)
    return 1


def _plain(v: Any, depth: int = 0) -> bool:
    """A value that renders unambiguously as lines: no empty container, null, empty or long string."""
    if depth > 3:
        return False
    if isinstance(v, dict):
        return bool(v) and all(isinstance(k, str) and k.strip() and _plain(x, depth + 1) for k, x in v.items())
    if isinstance(v, list):
        return bool(v) and all(_plain(x, depth + 1) for x in v)
    if isinstance(v, str):
        return bool(v.strip()) and len(v) <= 120 and "\n" not in v
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, (bool, int))


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _words(key: str) -> str:
    """``firstName`` / ``first_name`` / ``first-name`` -> ``first name``."""
    return " ".join(_CAMEL.sub(" ", key).replace("_", " ").replace("-", " ").split()).lower() or key


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def render(instance: Any, path: tuple[str, ...] = ()) -> list[str]:
    """The lines ``field name: value`` of an instance (nested keys joined with `` / ``, list
    items numbered from 1)."""
    if isinstance(instance, dict):
        return [line for k, v in instance.items() for line in render(v, (*path, _words(k)))]
    if isinstance(instance, list):
        return [line for i, v in enumerate(instance, 1) for line in render(v, (*path[:-1], f"{path[-1]} {i}")
                                                                           if path else (f"item {i}",))]
    return [f"{' / '.join(path) or 'value'}: {_value_text(instance)}"]


def jsonschemabench_items(n: int, path: Path | None = None, *, max_schema_chars: int = 2500,
                          max_leaves: int = 8) -> list[Item]:
    """*n* JSONSchemaBench schemas served exactly, each with a small valid instance (module doc)."""
    from ..api.calibrate import fields_match
    from ..decoding.normalize import make_validator
    from ..decoding.support import check_schema
    from .extract import load_corpus

    pool = []
    for r in sorted(load_corpus(path), key=lambda r: _rank(r["id"])):
        if len(pool) >= n:
            break
        schema = r["schema"]
        if not isinstance(schema, dict) or len(json.dumps(schema)) > max_schema_chars:
            continue
        instance = next((t["data"] for t in r.get("tests", []) if t.get("valid") and isinstance(t.get("data"), dict)
                         and _plain(t["data"]) and _leaves(t["data"]) <= max_leaves), None)
        if instance is None:
            continue
        try:
            if check_schema(schema).level != "exact" or any(make_validator(schema).iter_errors(instance)):
                continue
        except Exception:  # a schema the checker or validator chokes on is not part of the sample
            continue
        text = "Record details:\n" + "\n".join(render(instance))

        def judge(data: Any, instance: Any = instance) -> bool:
            return bool(fields_match(data, instance))

        pool.append(Item("jsonschemabench", r["id"], text, schema, instance, judge, MAX_TOKENS))
    return pool


def build(dataset: str, n: int) -> list[Item]:
    """The first *n* items of one of :data:`DATASETS`."""
    if dataset == "bfcl_simple":
        return bfcl_items(n, category="simple_python")
    if dataset == "bfcl_multiple":
        return bfcl_items(n, category="multiple")
    if dataset == "bfcl_parallel":
        return bfcl_parallel_items(n)
    if dataset == "jsonschemabench":
        return jsonschemabench_items(n)
    raise ValueError(f"unknown dataset {dataset!r} (have: {', '.join(DATASETS + EXTRA_DATASETS)})")


def available() -> str | None:
    """``None`` when the corpora are there, else why not."""
    from .bfcl import corpus_path as bfcl_path
    from .extract import corpus_path as jsb_path

    if bfcl_path() is None:
        return "the BFCL sample was not found (shared/conformance/bfcl)"
    if jsb_path() is None:
        return "the JSONSchemaBench sample was not found (shared/conformance/jsonschemabench)"
    return None


# ------------------------------------------------------------------------------------------ running


def run_items(model: Any, items: Iterable[Item], tick: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Extract each item once (greedy, no retry); one row per item: valid, right, every score."""
    from .._errors import ContextLengthError, ExtractionFailed, SchemaError

    rows = []
    for i, it in enumerate(items):
        t0 = time.perf_counter()
        row: dict[str, Any] = {"dataset": it.dataset, "id": it.id, "split": "select" if i % 2 == 0 else "heldout",
                               "valid": False, "right": False, "skipped": None, "scores": {}}
        try:
            x = model.extract(it.text, it.schema, temperature=0.0, max_tokens=it.max_tokens, retries=0)
        except ExtractionFailed:
            pass
        except (ContextLengthError, SchemaError) as exc:
            row["skipped"] = type(exc).__name__
        else:
            row["valid"] = True
            row["right"] = it.right(x.data)
            row["scores"] = {"confidence": float(x.confidence),
                             **{k: float(v) for k, v in x.scores.items()}}
            row["tokens"] = x.usage.completion_tokens
        row["s"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        if tick is not None:
            tick(i + 1)
    return rows


def _metrics(rows: list[dict[str, Any]], names: Iterable[str]) -> dict[str, Any]:
    from ..escalation.calibration import auroc, ece

    rows = [r for r in rows if not r["skipped"]]
    ok = [r for r in rows if r["valid"]]
    y = [1.0 if r["right"] else 0.0 for r in ok]
    out: dict[str, Any] = {"items": len(rows), "valid": len(ok), "right": int(sum(y)),
                           "accuracy": sum(y) / len(rows) if rows else None, "auroc": {}, "ece": {}}
    for k in names:
        s = [r["scores"].get(k) for r in ok]
        if not ok or any(v is None for v in s):
            out["auroc"][k] = out["ece"][k] = None
            continue
        a = auroc(s, y)
        out["auroc"][k] = None if math.isnan(a) else round(a, 4)
        out["ece"][k] = round(ece([min(1.0, max(0.0, v)) for v in s], y, ECE_BINS), 4)
    return out


def summarize(rows: list[dict[str, Any]], names: Iterable[str] | None = None) -> dict[str, Any]:
    """Per dataset, per split (all / select / heldout): items, valid, right, accuracy, and the AUROC
    (``None`` when one class is missing) and ECE of each score."""
    names = tuple(names or SCORES)
    out: dict[str, Any] = {}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == ds]
        out[ds] = {split: _metrics([r for r in mine if split == "all" or r["split"] == split], names)
                   for split in SPLITS}
    return out


def confidence_bench(model_ref: str, *, n: int = DEFAULT_N, datasets: Iterable[str] = DATASETS, n_threads: int = 2,
                     max_tokens: int | None = None, tick: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Build each dataset (*n* items), run the model on it and summarize (see the module doc).
    ``max_tokens``: another budget than :data:`MAX_TOKENS` (a smaller one caps more outputs)."""
    from .models import load_ref

    datasets = tuple(datasets)
    items = {ds: build(ds, n) for ds in datasets}
    if max_tokens is not None:
        for it in (it for v in items.values() for it in v):
            it.max_tokens = max_tokens
    model = load_ref(model_ref, n_ctx=4096, n_threads=n_threads)
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    try:
        done = 0
        for ds in datasets:
            t0 = time.perf_counter()
            base = done
            rows += run_items(model, items[ds], None if tick is None else (lambda k, b=base: tick(b + k)))
            done += len(items[ds])
            seconds[ds] = round(time.perf_counter() - t0, 1)
    finally:
        model.close()
    from ..decoding.scores import DEFAULT_CONFIDENCE

    return {"model": model_ref, "n_per_dataset": n, "max_tokens": max_tokens or MAX_TOKENS,
            "default": DEFAULT_CONFIDENCE, "scores": list(SCORES),
            "datasets": summarize(rows), "seconds": seconds, "rows": rows}


def choose(results: Mapping[str, Mapping[str, Any]], split: str = "select") -> dict[str, Any]:
    """The candidate with the best mean AUROC on *split* over every dataset of every model in
    *results* (model -> :func:`confidence_bench` result), and each candidate's mean and lowest
    AUROC on *split*, ``heldout`` and ``all``, and its mean ``heldout`` AUROC per model. A dataset
    counts in a split's figures when that split has at least :data:`MIN_CLASS` right and wrong
    valid answers (an AUROC over two right answers is noise). ``confidence`` (the score
    ``extract`` returns) is listed but is not a candidate."""
    from ..decoding.scores import CANDIDATES

    def enough(m: Mapping[str, Any]) -> bool:
        return min(m["right"], m["valid"] - m["right"]) >= MIN_CLASS

    table: dict[str, dict[str, Any]] = {}
    for k in ("confidence", *CANDIDATES):
        per = {s: [d[s]["auroc"].get(k) for r in results.values() for d in r["datasets"].values() if enough(d[s])]
               for s in (split, "heldout", "all")}
        row: dict[str, Any] = {}
        for s, vals in per.items():
            vals = [v for v in vals if v is not None]
            row[f"mean_{s}"] = round(sum(vals) / len(vals), 4) if vals else None
            row[f"min_{s}"] = min(vals) if vals else None
        row["heldout_by_model"] = {}
        for model, r in results.items():
            vals = [d["heldout"]["auroc"].get(k) for d in r["datasets"].values() if enough(d["heldout"])]
            vals = [v for v in vals if v is not None]
            row["heldout_by_model"][model] = round(sum(vals) / len(vals), 4) if vals else None
        table[k] = row
    ranked = [k for k in CANDIDATES if table[k][f"mean_{split}"] is not None]
    best = max(ranked, key=lambda k: table[k][f"mean_{split}"]) if ranked else None
    return {"split": split, "best": best, "candidates": table}
