"""``python -m edgeslm.bench --task FILE`` with a file that cannot be used (issue #24 item 7): a clean
error naming the file, exit status 2, before any model loads; a line whose schema cannot be served
is a broken line with a note, never an invalid answer of the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgeslm
from edgeslm.bench.task import load_task

GOOD = {"id": "ok", "text": "Maria Lopez lives in Lisbon.", "expected": {"city": "Lisbon"},
        "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
BAD_SCHEMA = {"id": "bad", "text": "x", "expected": {}, "schema": {"type": "object", "properties": {"a": {"type": 5}}}}
BAD_REF = {"text": "x", "expected": {}, "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}


def _line(row: object) -> bytes:
    return json.dumps(row).encode() + b"\n"


def _bench(*args: str, cli: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edgeslm", "bench"] if cli else [sys.executable, "-m", "edgeslm.bench"]
    return subprocess.run([*cmd, "--only", "task", "--no-peer", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TERM": "dumb"})


@pytest.mark.parametrize(("content", "says"), [
    (None, "error: no task file at {p}"),
    ("folder", "error: the task file {p} is a folder, not a file"),
    (_line(GOOD) + b'{"text": "caf\xe9"}\n', "error: the task file {p} is not UTF-8 text (line 2: invalid "
                                              "continuation byte)"),
    (b"", "error: the task file {p} is empty"),
    (b"\n  \r\n\n", "error: the task file {p} is empty"),
    (b"not json\n[1, 2]\n\n" + _line(BAD_SCHEMA) + b'{"text": "x"}\n',
     "error: the task file {p} has no usable line (line 1: not JSON (Expecting value at column 1); line 2: "
     "expected an object with text, schema, expected, not a list of 2; line 4: this schema cannot be served: not a "
     "valid JSON Schema at /properties/a/type: 5 is not valid under any of the given schemas; fix the schema; "
     "and 1 more)"),
])
def test_a_task_file_that_cannot_be_used_is_one_clean_error(tmp_path: Path, content: bytes | str | None,
                                                           says: str) -> None:
    path = tmp_path / "task.jsonl"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    p = _bench("--task", str(path))
    assert p.returncode == 2 and p.stdout == "", p.stderr
    lines = p.stderr.splitlines()
    assert lines[0] == says.format(p=path)
    assert lines[1].startswith('Hint: a task file is JSON Lines (UTF-8): one object per line, {"text": "..."')
    assert len(lines) == 2 and "Traceback" not in p.stderr


def test_the_edgeslm_bench_verb_says_the_same(tmp_path: Path) -> None:
    p = _bench("--task", str(tmp_path / "nofile.jsonl"), cli=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith(f"error: no task file at {tmp_path / 'nofile.jsonl'}\nHint: a task file is JSON Lines")


def test_broken_lines_are_noted_before_any_model_loads(tmp_path: Path) -> None:
    path = tmp_path / "task.jsonl"
    path.write_bytes(_line(GOOD) + _line(BAD_SCHEMA) + b"{cut\n" + _line(GOOD))
    p = _bench("--task", str(path), "--model", str(tmp_path / "no-model.gguf"))
    lines = p.stderr.splitlines()
    assert lines[0].startswith(f"{path}: line 2: this schema cannot be served: not a valid JSON Schema at "
                               "/properties/a/type") and lines[0].endswith("(skipped)")
    assert lines[1].startswith(f"{path}: line 3: not JSON (") and lines[1].endswith("(skipped)")
    assert p.returncode == 2 and "no-model.gguf" in p.stderr and "Traceback" not in p.stderr  # then the model


def test_help_says_what_happens_to_broken_lines() -> None:
    p = subprocess.run([sys.executable, "-m", "edgeslm.bench", "--help"], capture_output=True, text=True, timeout=120)
    text = " ".join(p.stdout.split())
    assert p.returncode == 0 and "whose schema edgeslm cannot serve, is skipped with a note naming it" in text
    assert "has no usable line stops before any model loads (exit status 2)" in text


def test_load_task_refuses_unservable_schemas_as_broken_lines(tmp_path: Path) -> None:
    path = tmp_path / "task.jsonl"
    inner = dict(GOOD, id="sep", text="a\u2028b")  # a line separator inside a string is not a line break
    path.write_text(json.dumps(GOOD) + "\r\n" + json.dumps(BAD_REF) + "\n" + json.dumps(inner, ensure_ascii=False)
                    + "\n" + json.dumps(BAD_SCHEMA) + "\n" + "7\n", encoding="utf-8")
    examples, errors = load_task(path)
    assert [e["id"] for e in examples] == ["ok", "sep"] and examples[1]["text"] == "a\u2028b"
    assert errors[0].startswith("line 2: this schema cannot be served: unresolvable $ref '#/nowhere'")
    assert errors[1].startswith("line 4: this schema cannot be served: not a valid JSON Schema")
    assert errors[2] == "line 5: expected an object with text, schema, expected, not the number 7"
    with pytest.raises(edgeslm.DatasetError) as e:
        load_task(tmp_path / "missing.jsonl")
    assert isinstance(e.value, edgeslm.EdgeSLMError) and "a task file is JSON Lines" in (e.value.hint or "")
