"""Decode on a busy machine: edgeslm (its default thread count) and llama-cpp-python (every core, as it is
usually opened), first with the machine idle, then with a CPU burner (another process spinning on one
core), same model and prompt, alternating. A desktop app always shares the machine."""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .models import load_ref

__all__ = ["contention_bench"]

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def _burner() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def contention_bench(model_ref: str, *, n_tokens: int = 64, reps: int = 3, peer: bool = True,
                     tick: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Greedy decode tokens/s idle and with one core busy, edgeslm (``n_threads=None``) and the peer."""
    from ._peer import peer_llama

    cores = os.cpu_count() or 1
    model = load_ref(model_ref, n_ctx=2048)  # n_threads=None: edgeslm's default, adapting to the load
    prompt = model.chat_prompt([{"role": "user", "content": PROMPT}])
    llm = peer_llama(model.path, n_ctx=2048, n_threads=cores, n_threads_batch=cores, verbose=False) if peer else None

    def ours() -> float:
        model.generate("x", max_tokens=1)
        r = model.chat([{"role": "user", "content": PROMPT}], max_tokens=n_tokens, temperature=0)
        return r.usage.decode_tokens_per_s

    def theirs() -> float:
        t_first, n = None, 0
        for _ in itertools.islice(llm.generate(prompt, temp=0, top_k=1, repeat_penalty=1.0, reset=True), n_tokens):
            n += 1
            if t_first is None:
                t_first = time.perf_counter()
        dt = time.perf_counter() - (t_first or time.perf_counter())
        return (n - 1) / dt if dt > 0 else 0.0

    rates: dict[str, dict[str, list[float]]] = {"edgeslm": {"idle": [], "busy": []}, "peer": {"idle": [], "busy": []}}
    done = 0
    try:
        for state in ("idle", "busy"):
            burner = _burner() if state == "busy" else None
            try:
                time.sleep(0.3)
                for _ in range(reps):
                    rates["edgeslm"][state].append(ours())
                    if llm is not None:
                        rates["peer"][state].append(theirs())
                    done += 1
                    if tick:
                        tick(done)
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
    finally:
        tuner = getattr(model._engine, "_tuner", None)
        threads_now = tuner.n if tuner is not None else None
        model.close()

    def side(name: str) -> dict[str, Any] | None:
        r = rates[name]
        if not r["idle"]:
            return None
        idle, busy = statistics.median(r["idle"]), statistics.median(r["busy"])
        return {"idle_tok_s": round(idle, 1), "busy_tok_s": round(busy, 1),
                "busy_over_idle": round(busy / idle, 3) if idle else None}

    out: dict[str, Any] = {"model": model_ref, "cores": cores, "tokens": n_tokens, "reps": reps,
                           "edgeslm": side("edgeslm"), "threads_at_end": threads_now}
    peer_side = side("peer")
    if peer_side:
        out["peer"] = peer_side
    return out
