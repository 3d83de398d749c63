"""Your own task: a JSON Lines file of ``{"text", "schema", "expected"[, "id"]}``, run through
edgeslm's ``extract`` and through llama-cpp-python's ``response_format`` peer on the same prompts,
scored for validity, exact-object accuracy and per-field accuracy, with latency p50/p95."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._errors import json_kind
from .models import load_ref

__all__ = ["TaskExample", "extract_row", "load_task", "peer_job", "peer_row", "score", "task_bench"]


class TaskExample(dict):  # type: ignore[type-arg]
    """One line of a task file: ``text``, ``schema``, ``expected`` and ``id``."""


_WHAT = ('a task file is JSON Lines (UTF-8): one object per line, {"text": "...", "schema": {a JSON Schema}, '
         '"expected": {the right answer}} with an optional "id"')


def load_task(path: str | Path) -> tuple[list[TaskExample], list[str]]:
    """The examples of a task file, and one error per broken line (``"line 7: ..."``): not JSON, a
    field missing or of the wrong type, or a schema edgeslm cannot serve. The other lines are kept,
    so one bad line does not stop the run. :class:`~edgeslm.DatasetError` (naming the file) when the
    file cannot be read, is not UTF-8, or has no usable line."""
    from .._errors import DatasetError, EdgeSLMError
    from ..api.extract import prepare_schema

    name = os.fspath(path)
    if os.path.isdir(name):
        raise DatasetError(f"the task file {name} is a folder, not a file", hint=_WHAT)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DatasetError(f"no task file at {name}", hint=_WHAT) from None
    except OSError as e:
        raise DatasetError(f"cannot read the task file {name}: {e.strerror or e}", hint=_WHAT) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(f"the task file {name} is not UTF-8 text (line {line}: {e.reason})", hint=_WHAT) from None
    if not text.strip():
        raise DatasetError(f"the task file {name} is empty", hint=_WHAT)
    examples: list[TaskExample] = []
    errors: list[str] = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a JSON string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            errors.append(f"line {n}: not JSON ({why})")
            continue
        except RecursionError:
            errors.append(f"line {n}: not JSON (nested too deeply)")
            continue
        if not isinstance(row, dict):
            errors.append(f"line {n}: expected an object with text, schema, expected, not {json_kind(row)}")
            continue
        missing = [k for k in ("text", "schema", "expected") if k not in row]
        if missing:
            errors.append(f"line {n}: missing {', '.join(missing)}")
            continue
        if not isinstance(row["text"], str) or not isinstance(row["schema"], dict):
            errors.append(f"line {n}: text must be a string and schema an object")
            continue
        try:
            prepare_schema(row["schema"])  # refused here, not counted as the model's invalid answer
        except EdgeSLMError as e:
            errors.append(f"line {n}: {e.message}")
            continue
        examples.append(TaskExample(id=str(row.get("id", n)), text=row["text"], schema=row["schema"],
                                    expected=row["expected"]))
    if not examples:
        shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
        raise DatasetError(f"the task file {name} has no usable line ({shown})", hint=_WHAT)
    return examples, errors


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        return " ".join(v.split()).casefold()
    if isinstance(v, bool):
        return ("bool", v)  # True is not 1
    if v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def score(got: Any, expected: Any) -> tuple[bool, dict[str, bool]]:
    """(whole object right, {field: right}) comparing case- and whitespace-insensitively; numbers by
    value. Fields are the expected object's top-level keys (a non-object counts as one field)."""
    if not isinstance(expected, dict):
        ok = _norm(got) == _norm(expected)
        return ok, {"": ok}
    fields = {k: isinstance(got, dict) and k in got and _norm(got[k]) == _norm(v) for k, v in expected.items()}
    return all(fields.values()), fields


def _quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    lat = [r["s"] for r in rows if r["s"] is not None]
    fields: dict[str, list[bool]] = {}
    for r in rows:
        for k, ok in r["fields"].items():
            fields.setdefault(k, []).append(ok)
    return {
        "examples": n,
        "valid": sum(r["valid"] for r in rows),
        "valid_rate": sum(r["valid"] for r in rows) / n if n else None,
        "accuracy": sum(r["exact"] for r in rows) / n if n else None,
        "field_accuracy": {k: sum(v) / len(v) for k, v in fields.items()},
        "latency_p50_s": _quantile(lat, 0.5),
        "latency_p95_s": _quantile(lat, 0.95),
        "completion_tokens_mean": statistics.mean([r["tokens"] for r in rows if r["tokens"] is not None] or [0]),
        "prompt_tokens_mean": statistics.mean([r["prompt_tokens"] for r in rows if r.get("prompt_tokens")] or [0]),
        "crashes": sum(r.get("crash", False) for r in rows),
    }


def task_bench(model_ref: str, examples: list[TaskExample], *, n_threads: int = 2, peer: bool = True,
               max_tokens: int = 256, tick: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run every example through edgeslm and (with *peer*) llama-cpp-python; summary and per-item rows."""

    from .extract import peer_run

    model = load_ref(model_ref, n_ctx=4096, n_threads=n_threads)
    mine: list[dict[str, Any]] = []
    jobs = []
    try:
        for i, ex in enumerate(examples):
            mine.append(extract_row(model, ex, max_tokens))
            jobs.append(peer_job(ex["text"], ex["schema"]))
            if tick:
                tick(i + 1)
    finally:
        path = model.path
        model.close()
    out: dict[str, Any] = {"model": model_ref, "edgeslm": _summary(mine), "rows": {"edgeslm": mine}}
    if peer:
        done = peer_run(path, n_threads, jobs, max_tokens)
        theirs = [peer_row(ex, *done.get(i, ("<crash>", None))) for i, ex in enumerate(examples)]
        out["peer"] = {"name": "llama-cpp-python response_format (GBNF)", **_summary(theirs)}
        out["rows"]["peer"] = theirs
    return out


def peer_job(text: str, schema: Any) -> tuple[Any, str, str]:
    """What the llama-cpp-python peer is given for one example: the schema, edgeslm's own
    extraction instructions (system) and the text (user)."""
    from edgeslm.api.extract import extraction_messages

    msgs = extraction_messages(text, schema)
    return schema, msgs[0]["content"], msgs[-1]["content"]


def peer_row(ex: Mapping[str, Any], text: str, dt: float | None) -> dict[str, Any]:
    """The peer's reply to one example (``"<crash>"`` when its process died), scored as
    :func:`extract_row` scores edgeslm's."""
    from edgeslm.decoding.normalize import make_validator

    row: dict[str, Any] = {"id": ex["id"], "valid": False, "exact": False, "tokens": None, "s": dt,
                           "crash": text == "<crash>"}
    try:
        data = json.loads(text)
        if not list(make_validator(ex["schema"]).iter_errors(data)):
            row["valid"] = True
            row["exact"], row["fields"] = score(data, ex["expected"])
    except ValueError:
        pass
    row.setdefault("fields", score(None, ex["expected"])[1])
    return row


def extract_row(model: Any, ex: Mapping[str, Any], max_tokens: int) -> dict[str, Any]:
    """One example through ``model.extract``, scored: validity, exact match, fields, tokens, seconds."""
    import edgeslm

    t = time.perf_counter()
    row: dict[str, Any] = {"id": ex["id"], "valid": False, "exact": False, "tokens": None}
    try:
        x = model.extract(ex["text"], ex["schema"], temperature=0, max_tokens=max_tokens)
        row.update(valid=True, tokens=x.usage.completion_tokens, confidence=x.confidence,
                   prompt_tokens=x.usage.prompt_tokens, scores=dict(x.scores))
        row["exact"], row["fields"] = score(x.data, ex["expected"])
    except edgeslm.EdgeSLMError as e:
        row["error"] = type(e).__name__
    row["s"] = time.perf_counter() - t
    row.setdefault("fields", score(None, ex["expected"])[1])
    return row
