"""Several generations at once on one engine context: the batch scheduler.

An engine that can hold several sequences in one context (:meth:`~edgeslm.backends.base.Backend.fork`:
llama.cpp) is driven here by N generations that each run the ordinary token loop
(:func:`~edgeslm.decoding.loop.generate_steps`: their own grammar matcher, forced tokens, retries)
in a worker thread, each on a :class:`SequenceView`: one sequence of the shared context seen as a
single-sequence backend. Whatever the workers ask the engine to evaluate in one round goes to it as
one batch (:class:`Batcher`: one ``llama_decode`` with a token or more per live sequence); a worker
that finishes takes the next waiting item (continuous batching, :class:`BatchRun`). A prompt prefix
another sequence already holds (instructions, schema, examples) is copied in the KV cache, not
evaluated again.

What an item is and what a worker does with it belong to the caller (``extract_many`` in
:mod:`edgeslm.api.batch`, the server's feed in :mod:`edgeslm.api.feed`): they subclass
:class:`BatchRun`. How many sequences pay, and whether they fit, is the runtime's policy
(:mod:`edgeslm.runtime.batching`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .._errors import GenerationError
from ..backends.base import Backend
from .loop import common_prefix

__all__ = ["SHARE_MIN_TOKENS", "BatchRun", "Batcher", "Cancelled", "SequenceView"]

#: A request of at least this many tokens looks for a prefix another sequence holds.
SHARE_MIN_TOKENS = 16


class Cancelled(BaseException):
    """Raised in a worker whose batch was stopped: not a failure of its item (never yielded)."""


class Batcher:
    """Evaluates what several worker threads ask of one multi-sequence context, as one batch.

    A worker is *active* while it holds its model (inside an attempt, between its evaluations). A
    round runs when every active worker waits on an evaluation. Rounds run on one engine thread of
    their own: an engine built with OpenMP keeps a team of threads per calling thread, and teams
    left idle by other callers would spin on the cores the batch needs."""

    def __init__(self, engine: Backend) -> None:
        self.engine = engine
        self.cv = threading.Condition(threading.RLock())
        self.active: set[int] = set()
        self.pending: dict[int, list[int]] = {}
        self.errors: dict[int, BaseException] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="edgeslm-batch-engine", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """End the batch: evaluations waiting, and every later call of a view, raise :class:`Cancelled`."""
        with self.cv:
            self._closed = True
            for seq in self.pending:
                self.errors[seq] = Cancelled()
            self.pending.clear()
            self.cv.notify_all()

    def close(self) -> None:
        self.cancel()
        self._thread.join()

    def live(self) -> None:
        """Raise :class:`Cancelled` once the batch has ended (call with ``cv`` held)."""
        if self._closed:
            raise Cancelled()

    def enter(self, seq: int) -> None:
        with self.cv:
            self.live()
            self.active.add(seq)

    def leave(self, seq: int) -> None:
        with self.cv:
            self.active.discard(seq)
            self.cv.notify_all()

    def _ready(self) -> bool:
        return bool(self.pending) and self.active <= self.pending.keys()

    def eval(self, seq: int, tokens: Sequence[int]) -> None:
        with self.cv:
            self.live()
            self.pending[seq] = list(tokens)
            self.cv.notify_all()
            while seq in self.pending:
                self.cv.wait()
            err = self.errors.pop(seq, None)
        if err is not None:
            raise err

    def _serve(self) -> None:
        with self.cv:
            while True:
                while not self._closed and not self._ready():
                    self.cv.wait()
                if self._closed:
                    for seq in list(self.pending):  # do not leave anyone waiting
                        self.errors[seq] = Cancelled()
                    self.pending.clear()
                    self.cv.notify_all()
                    return
                self._round()

    def _round(self) -> None:
        """One engine batch (the lock is held): each pending request, with a prefix another
        sequence already holds copied instead of evaluated; a request sharing a long prefix with
        one already in this batch waits one round, to copy it then."""
        e = self.engine
        batch: list[tuple[int, list[int]]] = []
        fulls: list[list[int]] = []
        for seq, toks in sorted(self.pending.items()):
            cache = e.seq_tokens(seq)
            if len(toks) >= SHARE_MIN_TOKENS:
                full = cache + toks
                best, src = len(cache), -1
                for other in range(e.max_sequences):
                    if other != seq:
                        n = min(common_prefix(e.seq_tokens(other), full), len(full) - 1)
                        if n > best:
                            best, src = n, other
                if src >= 0:
                    e.seq_copy(src, seq, best)
                    toks = self.pending[seq] = full[best:]
                    cache = e.seq_tokens(seq)
                if any(common_prefix(f, full) - len(cache) >= SHARE_MIN_TOKENS for f in fulls):
                    continue  # next round: copy it from that sequence
                fulls.append(full)
            batch.append((seq, toks))
        try:
            e.eval_many(batch)
        except BaseException as exc:  # each request of the batch fails with it; the others go on
            for seq, _ in batch:
                self.errors[seq] = exc
        finally:
            for seq, _ in batch:
                del self.pending[seq]
            self.cv.notify_all()


class SequenceView(Backend):
    """One sequence of a multi-sequence context, seen as a single-sequence backend: evaluations go
    through the :class:`Batcher`, every other engine call through its lock. :meth:`hold` /
    :meth:`let_go` bracket the time a worker uses it (the batcher waits for the workers it holds)."""

    def __init__(self, batcher: Batcher, seq: int, n_ctx: int) -> None:
        super().__init__()
        e = batcher.engine
        self._b, self._e, self.seq = batcher, e, seq
        for k in ("name", "device", "path", "n_vocab", "bos_id", "eos_id", "add_bos", "chat_template", "n_ctx_train",
                  "plan", "metadata"):
            setattr(self, k, getattr(e, k))
        self.n_ctx = n_ctx

    def hold(self) -> None:
        """A worker starts using this sequence: rounds wait for its evaluations."""
        self._b.enter(self.seq)

    def let_go(self) -> None:
        """The worker is done with it for now: rounds no longer wait for it."""
        self._b.leave(self.seq)

    @property
    def tokens(self) -> list[int]:
        with self._b.cv:
            self._b.live()
            return self._e.seq_tokens(self.seq)

    @property
    def vocab_owner(self) -> Backend:
        return self._e.vocab_owner

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        with self._b.cv:
            self._b.live()
            return self._e.tokenize(text, special=special)

    def token_bytes(self, token: int) -> bytes:
        with self._b.cv:
            self._b.live()
            return self._e.token_bytes(token)

    def token_text(self, token: int) -> str:
        with self._b.cv:
            self._b.live()
            return self._e.token_text(token)

    def is_eog(self, token: int) -> bool:
        with self._b.cv:
            self._b.live()
            return self._e.is_eog(token)

    def control_tokens(self) -> list[int]:
        with self._b.cv:
            self._b.live()
            return self._e.control_tokens()

    def eval(self, tokens: Sequence[int]) -> None:
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise GenerationError(f"KV cache overflow: {len(self.tokens)} + {len(tokens)} > n_ctx={self.n_ctx}",
                                  hint="load the model with a larger n_ctx=")
        self._b.eval(self.seq, tokens)

    def logits(self) -> np.ndarray:
        with self._b.cv:
            self._b.live()
            return self._e.logits_of(self.seq)

    def trim(self, n_keep: int) -> None:
        with self._b.cv:
            self._b.live()
            self._e.seq_trim(self.seq, n_keep)

    def kv_bytes_per_token(self) -> int:
        return self._e.kv_bytes_per_token()

    def memory_bytes(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing to free: the context belongs to the batch."""


_DONE = object()
_WAKE = object()


class BatchRun:
    """One running batch: a worker thread per sequence of a forked context, results in a queue.

    Subclasses say what a worker is (:meth:`make_worker`, given its :class:`SequenceView`), what it
    does with an item (:meth:`do`), where items come from (:meth:`take`; by default the *items*
    iterable of ``(index, item)`` pairs, read under a lock) and what to give back when the batch
    ends (:meth:`ended`). :meth:`run_on` starts the workers on a context the caller forked; iterating
    yields ``(index, result)`` as items finish. :meth:`cancel` stops it within an engine round, from
    any thread: the workers' unfinished items are dropped, the context freed, :meth:`ended` called;
    the iterator then returns the results already finished and raises the cancel's error. With
    :attr:`draining` set, workers take no new item and the batch ends when theirs are done."""

    def __init__(self, items: Iterable[tuple[int, Any]] = ()) -> None:
        self.items = items
        self.out: queue.Queue[Any] = queue.Queue()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.reading: list[bool] = []  # per worker: inside the caller's iterable (cannot be interrupted)
        self.fork: Backend | None = None
        self.batcher: Batcher | None = None
        self.running = 0
        self.error: BaseException | None = None
        self._state = threading.Lock()
        self._ended = False
        self.draining = False

    # ------------------------------------------------------------------ what subclasses say
    def make_worker(self, view: SequenceView) -> Any:
        """What runs the items of one sequence (a model bound to *view*)."""
        raise NotImplementedError

    def do(self, worker: Any, i: int, item: Any) -> Any:
        """Run one item on a worker; the result is yielded as ``(i, result)``."""
        raise NotImplementedError

    def ended(self) -> None:
        """Called once, after the workers stopped and the context was freed."""

    def take(self, seq: int) -> tuple[int, Any] | None:
        """The next item for worker *seq* (``None``: no more, or stopped)."""
        while not self._source_lock.acquire(timeout=0.05):
            if self.stop.is_set():
                return None
        try:
            if self.stop.is_set() or self.draining:
                return None
            self.reading[seq] = True
            try:
                return next(self._source)  # type: ignore[no-any-return]
            finally:
                self.reading[seq] = False
        except StopIteration:
            return None
        except BaseException as exc:  # the caller's iterable failed: end the batch with it
            self.out.put(exc)
            return None
        finally:
            self._source_lock.release()

    # ------------------------------------------------------------------ running
    def run_on(self, fork: Backend, n: int, n_ctx: int) -> None:
        """Start *n* workers on the sequences of *fork* (owned by the batch from now on: freed when it
        ends), each sequence holding up to *n_ctx* tokens."""
        self.fork, self.batcher = fork, Batcher(fork)
        self._source = iter(self.items)
        self._source_lock = threading.Lock()
        self._n_ctx = n_ctx
        self.reading = [False] * n
        self.threads = [threading.Thread(target=self._work, args=(s,), name=f"edgeslm-batch-{s}", daemon=True)
                        for s in range(n)]
        self.running = n
        for t in self.threads:
            t.start()

    def _work(self, seq: int) -> None:
        assert self.batcher is not None
        try:
            try:
                worker = self.make_worker(SequenceView(self.batcher, seq, self._n_ctx))
            except BaseException as exc:  # a bug: end the batch with it
                self.out.put(exc)
                return
            while not self.stop.is_set():
                got = self.take(seq)
                if got is None or self.stop.is_set():
                    return
                i, item = got
                try:
                    self.out.put((i, self.do(worker, i, item)))
                except Cancelled:
                    return
                except BaseException as exc:  # not an error of this item: a bug, or closed
                    self.out.put(exc)
                    return
        finally:
            self.out.put(_DONE)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self

    def __next__(self) -> tuple[int, Any]:
        while True:
            if self.error is not None:  # stopped: what finished before, then the error
                try:
                    got = self.out.get_nowait()
                except queue.Empty:
                    self.shutdown()
                    raise self.error from None
            elif self.running == 0:
                self.shutdown()
                raise StopIteration
            else:
                got = self.out.get()
            if got is _DONE:
                self.running -= 1
            elif got is _WAKE:
                continue
            elif isinstance(got, BaseException):
                if self.error is None:
                    self.cancel(got)
            else:
                return got  # type: ignore[no-any-return]

    def cancel(self, error: BaseException) -> None:
        """Stop the batch (from any thread); the iterator's owner gets *error* after the results that
        finished."""
        with self._state:
            if self.error is None:
                self.error = error
        self.shutdown()
        self.out.put(_WAKE)

    def shutdown(self) -> None:
        """Stop the workers, free the context, call :meth:`ended`; idempotent, from any thread."""
        with self._state:
            if self._ended or self.batcher is None:
                return
            self._ended = True
        batcher, fork = self.batcher, self.fork
        self.stop.set()
        batcher.cancel()  # evaluations waiting, and every later one, raise Cancelled in their worker
        for seq, t in enumerate(self.threads):
            if t is not threading.current_thread() and not self.reading[seq]:
                t.join()  # a worker inside the caller's iterable returns when it does, touching nothing
        batcher.close()
        with batcher.cv:  # the views check the batch under this lock before touching the context
            if fork is not None:
                fork.close()
        self.ended()
