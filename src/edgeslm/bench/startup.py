"""Time from a fresh process to the first validated extraction: ``edgeslm.load`` + ``extract`` against
llama-cpp-python's ``Llama(...)`` + ``create_chat_completion(response_format=...)`` on the same model,
threads and prompt, each a whole new Python process (imports included), alternating, median of *reps*.

The engine self-check (the first load of a new llama.cpp build on a CPU runs a child once) is done
before the runs, as it would be after an app's first start; the runs measure every later start. The
processes may write and read Python's bytecode cache (``PYTHONDONTWRITEBYTECODE`` is dropped from
their environment) and one unmeasured run of each comes first: an installed package has its
``.pyc`` files, and an editable checkout under that variable would otherwise compile edgeslm's modules
from source in every process while the peer's come compiled from ``pip install`` (0.1-0.15 s here).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .models import load_ref, parse_ref

__all__ = ["startup_bench"]

TEXT = "Maria Lopez, aged 31, moved to Lisbon last year."
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}

_EDGESLM = """
import json, sys, time
t0 = time.perf_counter()
import edgeslm
from edgeslm.bench.models import load_ref
t1 = time.perf_counter()
ref, threads, schema, text = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
m = load_ref(ref, n_ctx=2048, n_threads=threads)
t2 = time.perf_counter()
x = m.extract(text, schema, temperature=0)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_extract_s": t3 - t2, "data": x.data}))
"""

_PEER = """
import json, sys, time
t0 = time.perf_counter()
import llama_cpp
import llama_cpp.llama_cpp as lib
t1 = time.perf_counter()
path, threads, schema, text, extra = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
if extra == "0":  # the option edgeslm's self-check chose here (AMX CPUs: off), so both run the same kernels
    real = lib.llama_model_default_params
    def safe():
        p = real()
        p.use_extra_bufts = False
        return p
    lib.llama_model_default_params = safe
llm = llama_cpp.Llama(path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
t2 = time.perf_counter()
sys_msg, user = json.loads(sys.argv[6])
r = llm.create_chat_completion(messages=[{"role": "system", "content": sys_msg}, {"role": "user", "content": user}],
                               response_format={"type": "json_object", "schema": schema}, temperature=0,
                               max_tokens=256)
data = json.loads(r["choices"][0]["message"]["content"])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_extract_s": t3 - t2, "data": data}))
"""


def _run(args: list[str], timeout: float) -> tuple[float, dict[str, Any] | None, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t, None, f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t
    if r.returncode != 0:
        return wall, None, (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1][:300]
    try:
        return wall, json.loads(r.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return wall, None, "no result printed"


def startup_bench(model_ref: str, *, reps: int = 3, n_threads: int = 2, peer: bool = True, timeout: float = 300.0,
                  tick: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Whole-process seconds to the first validated extraction, edgeslm and (with *peer*) the peer."""
    from edgeslm.api.extract import extraction_messages

    m = load_ref(model_ref, n_ctx=512, n_threads=n_threads)  # runs (and remembers) the engine self-check
    try:
        path = m.path
        check = m.plan.engine_check
        extra = "1" if check is None or check.chosen is None or check.chosen.extra_bufts else "0"
    finally:
        m.close()
    schema = json.dumps(SCHEMA)
    msgs = extraction_messages(TEXT, SCHEMA)
    ours: list[tuple[float, dict[str, Any] | None, str]] = []
    theirs: list[tuple[float, dict[str, Any] | None, str]] = []
    done = 0
    ours_args = [_EDGESLM, model_ref, str(n_threads), schema, TEXT]
    theirs_args = [_PEER, str(path), str(n_threads), schema, TEXT, extra,
                   json.dumps([msgs[0]["content"], msgs[-1]["content"]])]
    with_peer = peer and parse_ref(model_ref)[1] is None
    _run(ours_args, timeout)  # unmeasured: bytecode caches written, files in the page cache, for both
    if with_peer:
        _run(theirs_args, timeout)
    for _ in range(reps):  # alternating, so a change in the machine's load falls on both
        ours.append(_run(ours_args, timeout))
        done += 1
        if with_peer:
            theirs.append(_run(theirs_args, timeout))
        if tick:
            tick(done)

    def summary(runs: list[tuple[float, dict[str, Any] | None, str]]) -> dict[str, Any]:
        ok = [(w, d) for w, d, _ in runs if d is not None]
        out: dict[str, Any] = {"runs": len(runs), "ok": len(ok), "errors": [e for _, d, e in runs if d is None],
                               "s_median": statistics.median([w for w, _ in ok]) if ok else None}
        for k in ("import_s", "load_s", "first_extract_s"):
            out[k] = statistics.median([d[k] for _, d in ok]) if ok else None
        return out

    result: dict[str, Any] = {"model": model_ref, "edgeslm": summary(ours)}
    if theirs:
        result["peer"] = summary(theirs)
    return result
