"""Seeded, bounded fuzzing of chat templates, JSON Schemas and message lists (issue #15).

Each target runs in a child process (``tests/_fuzz.py``), so a crash or a hang fails the test and
names the input that caused it. Every case must end in a result or an ``EdgeSLMError`` with a hint
(or the documented ``TypeError`` for a wrong-typed argument), within its time limit.
``EDGESLM_FUZZ_SEED`` and ``EDGESLM_FUZZ_SCALE`` (a multiplier of the case counts) explore further.
GGUF metadata values are fuzzed by the engine self-check's own tests (see the TODO in ``_fuzz.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import requires_smollm2

FUZZ = Path(__file__).with_name("_fuzz.py")
SEED = int(os.environ.get("EDGESLM_FUZZ_SEED", "15"))
SCALE = float(os.environ.get("EDGESLM_FUZZ_SCALE", "1"))

# target: (cases, seconds any one case may take, seconds for the whole child). A case's limit is
# the library's own bound (a render: 2 s, up to three renders for templates that rewrite text;
# check_schema: 5 s plus the compilation in progress; a reply of 1-2 tokens) with room for a busy
# 2-core machine, where evaluating a 60-token prompt was seen to take 17 s.
PLAN = {
    "templates": (150, 15.0, 240),
    "schemas": (60, 25.0, 400),
    "messages": (80, 60.0, 600),
}


def _run(target: str) -> list[dict]:
    cases, _, limit = PLAN[target]
    n = max(1, int(cases * SCALE))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    try:
        out = subprocess.run([sys.executable, str(FUZZ), target, "--seed", str(SEED), "--cases", str(n)],
                             capture_output=True, text=True, timeout=limit * SCALE, env=env)
        stdout, code, hung = out.stdout, out.returncode, False
        stderr = out.stderr
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr, code, hung = "", None, True
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    starts = {d["start"]: d["input"] for d in lines if "start" in d}
    ends = {d["case"]: d for d in lines if "case" in d}
    unfinished = [starts[i] for i in starts if i not in ends]
    assert not hung, f"{target}: the fuzzer hung on {unfinished[-1:] or 'start-up'}"
    assert code == 0 and not unfinished, f"{target}: crashed (exit {code}) on {unfinished}: {stderr[-2000:]}"
    assert len(ends) == n
    return [dict(e, input=starts[i]) for i, e in ends.items()]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("target", ["templates", "schemas", pytest.param("messages", marks=requires_smollm2)])
def test_fuzz(target: str) -> None:
    results = _run(target)
    _, per_case, _ = PLAN[target]
    bad = [r for r in results if r["outcome"].startswith("BAD")]
    assert not bad, "\n".join(f"{r['outcome']}\n    input: {r['input']}" for r in bad[:5])
    slow = [r for r in results if r["seconds"] > per_case]
    assert not slow, "\n".join(f"{r['seconds']} s: {r['input']}" for r in slow[:5])
    outcomes = {r["outcome"].split(":")[0] for r in results}
    assert "ok" in outcomes and "EdgeSLMError" in outcomes  # the generator reaches both sides
