"""The ``edgeslm`` command line, run as a real process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import requires_smollm2


@requires_smollm2
def test_cli_chat_answers() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgeslm", "chat", "--model", "smollm2-135m", "--temperature", "0",
         "--max-tokens", "16", "-v", "What is 2+2?"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "tok/s" in out.stderr


def test_cli_error_is_friendly() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgeslm", "chat", "--model", "/no/such/model.gguf", "hi"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "error" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("verb", ["chat", "doctor", "extract", "calibrate", "pull", "list", "rm", "verify", "bench"])
def test_cli_help(verb: str) -> None:
    out = subprocess.run([sys.executable, "-m", "edgeslm", verb, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage" in out.stdout


def test_cli_extract_unreadable_input_is_friendly(tmp_path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object"}')
    out = subprocess.run(
        [sys.executable, "-m", "edgeslm", "extract", "--schema", str(schema), str(tmp_path / "missing.txt")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "cannot read the input" in out.stderr and "Traceback" not in out.stderr
