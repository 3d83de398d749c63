"""Run a peer library in a child process that may crash or hang, one job after another."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["run_in_child"]


def run_in_child(
    worker: Callable[..., None],
    args: tuple[Any, ...],
    jobs: Sequence[Any],
    *,
    timeout_s: float,
    first_extra_s: float = 0.0,
) -> tuple[dict[int, tuple[Any, ...]], dict[int, str]]:
    """Call ``worker(jobs[start:], q, *args)`` in a spawned process; it puts ``(i, *result)`` per job, then None.

    A job that kills the process, or runs past *timeout_s* (plus *first_extra_s* for the first job of
    a process, which also loads the model), is recorded as ``"crash"`` / ``"timeout"`` and the child
    is restarted after it. Returns the results and the failures, both keyed by job index.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results: dict[int, tuple[Any, ...]] = {}
    failures: dict[int, str] = {}
    start = 0
    while start < len(jobs):
        q = ctx.Queue()
        proc = ctx.Process(target=worker, args=(list(jobs[start:]), q, *args))
        proc.start()
        last = start - 1
        failure = None
        waited_since = time.perf_counter()
        while True:
            try:
                item = q.get(timeout=1.0)
            except queue.Empty:
                limit = timeout_s + (first_extra_s if last < start else 0.0)
                if not proc.is_alive():
                    failure = "crash"
                elif time.perf_counter() - waited_since > limit:
                    failure = "timeout"
                else:
                    continue
                break
            if item is None:
                break
            results[start + item[0]] = tuple(item[1:])
            last = start + item[0]
            waited_since = time.perf_counter()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
        if failure is None:
            break
        failures[last + 1] = failure  # the job after the last answered one
        start = last + 2
    return results, failures
