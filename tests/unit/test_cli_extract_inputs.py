"""`edgeslm extract` with inputs that cannot be read or lines that are not documents (issue #24
item 7): each gets its own error line, the others still run, the exit status says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fakes import write_script

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
ROOT = Path(__file__).resolve().parents[2]
CODE = ("import sys; from tests.fakes import register_scripted; register_scripted(); "
        "from edgeslm.cli import main; sys.exit(main(sys.argv[1:]))")


def _extract(tmp_path: Path, *args: str, stdin: bytes = b"") -> tuple[int, list[dict[str, Any]], str]:
    script = write_script(tmp_path / "m.script.json", "hermes", '{"a":7}')
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    run = subprocess.run([sys.executable, "-c", CODE, "extract", "-m", str(script), "-s", str(tmp_path / "s.json"),
                          *args], input=stdin, capture_output=True, timeout=120, cwd=ROOT)
    err = run.stderr.decode()
    assert "Traceback" not in err, err
    return run.returncode, [json.loads(x) for x in run.stdout.decode().splitlines()], err


def test_every_input_file_runs_and_a_broken_one_gets_its_own_error_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a is 7")
    (tmp_path / "c.txt").write_text("a is seven")
    (tmp_path / "latin1.txt").write_bytes("a est \xe9gal \xe0 7".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    names = [str(tmp_path / n) for n in ("a.txt", "missing.txt", "c.txt", "folder", "latin1.txt")]
    for batch in ("1", "2"):
        code, lines, _ = _extract(tmp_path, *names, "--batch-size", batch)
        assert code == 1
        assert [x["index"] for x in lines] == [0, 1, 2, 3, 4] and [x["input"] for x in lines] == names
        assert lines[0]["data"] == {"a": 7} and lines[2]["data"] == {"a": 7}  # c.txt ran after the missing one
        errors = {x["input"]: x["error"] for x in lines if "error" in x}
        assert set(errors) == {names[1], names[3], names[4]}
        assert errors[names[1]]["message"] == f"cannot read the input {names[1]}: No such file or directory"
        assert errors[names[3]]["message"] == f"cannot read the input {names[3]}: it is a folder, not a file"
        assert errors[names[4]]["message"].startswith(f"cannot read the input {names[4]}: not UTF-8 text")
        assert all(e["type"] == "InvalidRequestError" and e["hint"] for e in errors.values())
    code, lines, _ = _extract(tmp_path, names[0], names[2])
    assert code == 0 and [x["data"] for x in lines] == [{"a": 7}, {"a": 7}]


def test_a_broken_jsonl_line_says_what_it_is_and_the_others_run(tmp_path: Path) -> None:
    stdin = b"\n".join([
        b'"a is 7"', b"null", b"5", b"[1, 2]", b'{"title": "x"}', b'{"text": 5}', b"not json", b"true",
        b'"caf\xe9"', b"", b'{"text": "a is 8"}',
    ]) + b"\n"
    code, lines, _ = _extract(tmp_path, "--jsonl", "-", stdin=stdin)
    assert code == 1
    got = {x["input"]: x for x in lines}
    assert [x["index"] for x in lines] == list(range(10))
    assert got["stdin:1"]["data"] == {"a": 7} and got["stdin:11"]["data"] == {"a": 7}  # after the broken ones
    messages = {k: v["error"]["message"] for k, v in got.items() if "error" in v}
    assert messages == {
        "stdin:2": 'line 2 of stdin is null, not a document: a JSON string or an object with a "text" string '
                   "was expected",
        "stdin:3": 'line 3 of stdin is the number 5, not a document: a JSON string or an object with a "text" '
                   "string was expected",
        "stdin:4": 'line 4 of stdin is a list of 2, not a document: a JSON string or an object with a "text" string '
                   "was expected",
        "stdin:5": 'line 5 of stdin is an object without a "text" field ("title")',
        "stdin:6": 'the "text" of line 6 of stdin is the number 5, not a string',
        "stdin:7": 'line 7 of stdin is not JSON (Expecting value at column 1); a JSON string or an object with '
                   'a "text" string was expected',
        "stdin:8": 'line 8 of stdin is the boolean true, not a document: a JSON string or an object with a '
                   '"text" string was expected',
        "stdin:9": "line 9 of stdin is not UTF-8 text (invalid continuation byte at byte 4)",
    }
    assert all("--jsonl" in v["error"]["hint"] for v in got.values() if "error" in v)


def test_jsonl_files_with_a_missing_one_between(tmp_path: Path) -> None:
    (tmp_path / "one.jsonl").write_text('"a is 7"\n{"text": "a is 7"}\n')
    (tmp_path / "three.jsonl").write_text('{"text": "a is 7"}\n')
    one, two, three = (str(tmp_path / n) for n in ("one.jsonl", "two.jsonl", "three.jsonl"))
    code, lines, _ = _extract(tmp_path, "--jsonl", one, two, three)
    assert code == 1
    assert [x["input"] for x in lines] == [f"{one}:1", f"{one}:2", two, f"{three}:1"]
    assert lines[2]["error"]["message"] == f"cannot read the input {two}: No such file or directory"
    assert [x.get("data") for x in lines] == [{"a": 7}, {"a": 7}, None, {"a": 7}]


def test_one_unreadable_input_fails_before_the_model_loads(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    run = subprocess.run([sys.executable, "-m", "edgeslm", "extract", "-m", str(tmp_path / "no-model.gguf"), "-s",
                          str(tmp_path / "s.json"), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert f"cannot read the input {tmp_path}: it is a folder, not a file" in run.stderr
    assert "Traceback" not in run.stderr and "Hint:" in run.stderr


def test_help_documents_the_exit_status() -> None:
    run = subprocess.run([sys.executable, "-m", "edgeslm", "extract", "--help"], capture_output=True, text=True,
                         timeout=120)
    text = " ".join(run.stdout.split())
    assert run.returncode == 0 and "Exit status: 0 when every document was extracted, 1 when any failed, 2" in text
