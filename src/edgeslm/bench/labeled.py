"""The labeled extraction set in ``benchmarks/labeled/`` (one folder per task: ``schema.json`` and
``examples.jsonl`` with ``{"id", "text", "expected"}``), for calibration tests and benchmarks.

It lives in the repository, not the wheel: run from a checkout, or point ``EDGESLM_LABELED_DIR``
at a copy of the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["labeled_dir", "load_task", "tasks"]


def labeled_dir() -> Path:
    """The folder holding the tasks: ``EDGESLM_LABELED_DIR``, else ``benchmarks/labeled`` above this file."""
    env = os.environ.get("EDGESLM_LABELED_DIR")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        p = parent / "benchmarks" / "labeled"
        if p.is_dir():
            return p
    raise FileNotFoundError(
        "benchmarks/labeled not found: run from an edgeslm checkout or set EDGESLM_LABELED_DIR"
    )


def tasks() -> list[str]:
    """Names of the tasks (folders with a ``schema.json``)."""
    return sorted(p.parent.name for p in labeled_dir().glob("*/schema.json"))


def load_task(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(schema, examples)`` of one task; each example is ``{"id", "text", "expected"}``."""
    d = labeled_dir() / name
    if not (d / "schema.json").is_file():
        raise FileNotFoundError(f"no labeled task {name!r} in {labeled_dir()} (have: {', '.join(tasks())})")
    schema = json.loads((d / "schema.json").read_text(encoding="utf-8"))
    with open(d / "examples.jsonl", encoding="utf-8") as f:
        examples = [json.loads(line) for line in f if line.strip()]
    return schema, examples
