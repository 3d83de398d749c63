"""Calls that share one engine batch as they arrive: how ``edgeslm serve`` decodes concurrent
requests with a schema together, the way ``extract_many`` decodes its documents.

A :class:`JobFeed` holds jobs, each a function of a model. :func:`run_feed` takes the model, opens a
context of up to ``batch_size`` sequences and runs the jobs in worker threads, each on a model
bound to one sequence (:mod:`edgeslm.decoding.scheduler`: whatever the workers ask of the engine in one
round goes to it as one batch). A worker that finishes a job takes the next one waiting (continuous
batching); jobs offered while the batch runs join it, until the feed stops accepting: when it runs
dry with no job left running, or when ``should_yield()`` says another caller waits for the model (so
a steady stream of batched calls cannot starve the others). Where the engine cannot fork, or where
the size chosen is 1 (``batch_size=None`` and batching does not pay on this engine, see
:func:`~edgeslm.runtime.batching.chosen_batch_size`), the jobs run one at a time in the same turn.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from typing import Any

from .._errors import ModelClosedError
from ..decoding.scheduler import Cancelled
from ..runtime.batching import can_fork, chosen_batch_size
from .batch import ExtractRun

__all__ = ["Job", "JobFeed", "run_feed"]


class Job:
    """``fn(model)`` to run; ``done(result, error)`` is called once, from the thread that ran it
    (or from the one that gave up on it)."""

    __slots__ = ("done", "fn", "settled")

    def __init__(self, fn: Callable[[Any], Any], done: Callable[[Any, BaseException | None], None]) -> None:
        self.fn, self.done, self.settled = fn, done, False


class JobFeed:
    """Jobs waiting for (or running in) one batch; thread-safe (see the module docstring)."""

    def __init__(self, should_yield: Callable[[], bool] | None = None) -> None:
        self._cv = threading.Condition()
        self._jobs: collections.deque[Job] = collections.deque()
        self._live: set[Job] = set()
        self._accepting = True
        self._started = False
        self._should_yield = should_yield
        self.ran = 0  #: jobs run
        self.most_at_once = 0  #: the most jobs that ran at the same time

    @property
    def pending(self) -> int:
        """Jobs waiting to start."""
        return len(self._jobs)

    def offer(self, job: Job) -> bool:
        """Add *job*; ``False`` when the feed no longer accepts (its batch is ending)."""
        with self._cv:
            if not self._accepting:
                return False
            if self._started and self._should_yield is not None and self._should_yield():
                self._accepting = False
                return False
            self._jobs.append(job)
            self._cv.notify_all()
            return True

    def start(self) -> None:
        with self._cv:
            self._started = True

    def take(self, stop: threading.Event | None = None) -> Job | None:
        """The next job; waits while others run (one may offer more), ``None`` once the feed is dry
        and nothing runs, or *stop* is set."""
        with self._cv:
            while True:
                if stop is not None and stop.is_set():
                    return None
                if self._jobs:
                    job = self._jobs.popleft()
                    self._live.add(job)
                    self.most_at_once = max(self.most_at_once, len(self._live))
                    return job
                if not self._live or not self._accepting:
                    self._accepting = False
                    self._cv.notify_all()
                    return None
                self._cv.wait(0.05)

    def run(self, job: Job, model: Any) -> None:
        """Run *job* on *model* and settle it; a closed model or a stopped batch goes on up."""
        try:
            result = job.fn(model)
        except Cancelled:
            raise  # the batch was stopped: close() settles the job
        except BaseException as exc:
            self._settle(job, None, exc)
            if isinstance(exc, ModelClosedError):
                raise
            return
        self._settle(job, result, None)

    def _settle(self, job: Job, result: Any, error: BaseException | None) -> None:
        with self._cv:
            self._live.discard(job)
            if job.settled:
                return
            job.settled = True
            self.ran += 1
            self._cv.notify_all()
        job.done(result, error)

    def close(self, error: BaseException) -> None:
        """Accept nothing more; every job not settled yet (waiting or cut off) gets *error*."""
        with self._cv:
            self._accepting = False
            left = list(self._jobs) + list(self._live)
            self._jobs.clear()
            self._cv.notify_all()
        for job in left:
            self._settle(job, None, error)


class _FeedRun(ExtractRun):
    """A batch whose items are the feed's jobs, taken as they come."""

    def __init__(self, model: Any, feed: JobFeed) -> None:
        super().__init__(model, (), None, {})
        self.feed = feed
        self._count = itertools.count()

    def take(self, seq: int) -> tuple[int, Any] | None:
        job = self.feed.take(self.stop)
        return None if job is None else (next(self._count), job)

    def do(self, worker: Any, i: int, item: Any) -> Any:
        self.feed.run(item, worker)
        return None


def run_feed(model: Any, feed: JobFeed, batch_size: int | None = None) -> None:
    """Run *feed*'s jobs on *model* (see the module docstring) until it is dry; every job is
    settled when this returns or raises. ``batch_size``: the sequences at most (``None``: chosen
    by :func:`~edgeslm.runtime.batching.chosen_batch_size` for the jobs waiting at the start: the probed
    decode gain, as requests come one by one and cannot be measured first)."""
    error: BaseException = ModelClosedError("the batch ended before this call ran",
                                            hint="retry the request")
    try:
        with model._gen.holding() as engine:  # raises ModelClosedError once closed
            total = None if batch_size is not None else max(1, feed.pending)
            n = chosen_batch_size(engine, model.n_ctx, batch_size, total)
        feed.start()
        if n > 1 and can_fork(engine):
            run = _FeedRun(model, feed)
            if run.start(n, auto=batch_size is None):
                try:
                    for _ in run:
                        pass
                finally:
                    run.shutdown()
                return
        while (job := feed.take()) is not None:
            feed.run(job, model)
    except BaseException as exc:
        error = exc
        raise
    finally:
        feed.close(error)
