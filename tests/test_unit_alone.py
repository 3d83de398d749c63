"""The model-free unit tests (tests/unit) run in a fresh interpreter where llama.cpp and ONNX
Runtime GenAI cannot be imported: the loop, prefill, stop strings, sampler, retries and tool
parsing need no engine and no model file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_the_unit_tests_pass_with_no_engine_importable() -> None:
    env = {**os.environ, "EDGESLM_NO_ENGINES": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit",
         "-W", "error::pytest.PytestUnraisableExceptionWarning"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280,
    )
    took = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "error" not in proc.stdout.splitlines()[-1]
    print(f"tests/unit without engines: {proc.stdout.splitlines()[-1]} ({took:.1f} s wall)")


def test_the_engine_blocker_works() -> None:
    """The blocker of tests/unit/conftest.py really stops an engine import (else the test above proves nothing)."""
    code = ("import os; os.environ['EDGESLM_NO_ENGINES']='1'; import tests.unit.conftest\n"
            "try:\n import llama_cpp\nexcept ImportError as e:\n print('blocked', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "blocked" in proc.stdout, proc.stdout + proc.stderr
