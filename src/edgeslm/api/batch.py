"""Many extractions in one call: ``Model.extract_many`` and ``Model.extract_iter``.

Every item gets what ``extract`` gives (validation, retries, confidence, usage, escalation when
configured); an item that fails (a text longer than the context, no valid output) is an
:class:`~edgeslm.EdgeSLMError` in its slot, so one bad document never loses the batch.

**Batched decoding.** When the engine can hold several sequences in one context
(:meth:`~edgeslm.backends.base.Backend.fork`: llama.cpp), up to ``batch_size`` items decode
together: each item runs the ordinary ``extract`` path (its own grammar matcher, forced tokens,
retries, validation) in a worker thread, on a view of one sequence of a shared context. Whatever
the workers ask the engine to evaluate in one round goes to it as one batch (one ``llama_decode``
with a token or more per live sequence); a worker that finishes takes the next waiting item
(continuous batching). A prompt prefix another sequence already holds (the instructions, the schema,
the examples) is copied in the KV cache, not evaluated again. The context is opened for the call
and freed after it.

Results are those of ``extract`` on the same inputs, except where the model hesitates between
two tokens: llama.cpp's CPU kernels compute a token slightly differently in a call of one token
(every decode step of ``extract``), of several, or of 64 or more, and without flash attention by
where the cache placed its sequence, so greedy decoding can take the other one. A model loaded
with ``batch_invariant=True`` rules all of these out (see
:class:`~edgeslm.backends.llamacpp.LlamaCppBackend`): greedy results are then those of ``extract``
token for token, where the engine computes each token's row on its own (SmolLM2-135M; not
Gemma-3-270M, whose Q5_0/Q8_0 tensors go through tiled kernels).

The sequences of a batch do not draft copied text (:class:`~edgeslm.decoding.loop.PromptLookup`):
a sequence view does not ``verify``. On 2 CPU cores the rows drafts add to a round cost as much as
the rounds they save or more (Gemma-3-270M: 0.91x with drafts in the batch, 1.11x one at a time;
SmolLM2-135M, 32 documents, two runs each: 0.92x and 0.93x of one at a time with drafts in the
batch, 0.85x and 0.99x without).

ONNX Runtime GenAI models (and any engine without ``fork``) run the items one at a time; the
shared prefix still stays in the KV cache between items. onnxruntime-genai 0.18 has two batched
paths and neither keeps these guarantees: a ``Generator`` of ``batch_size`` > 1 takes its tokens
once (no second ``append_tokens``, ``rewind_to`` only 0), so every sequence evaluates the whole
prompt, forced tokens go one per step, retries and prefix reuse are lost (SmolLM2 int4, 2 cores: 8 prompts of
350 tokens, 11.5 s in one batch; the same 8 documents' 55 new tokens on a kept prefix, 1.7 s one at
a time); its ``Engine`` chooses tokens itself and returns no logits (no grammar loop, no confidence).
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .._errors import (
    BackendUnavailableError,
    EdgeSLMError,
    GenerationError,
    InsufficientMemoryError,
    InvalidRequestError,
    ModelClosedError,
)
from ..backends.base import Backend
from ..decoding.loop import common_prefix
from .generation import Generation
from .results import Extraction

__all__ = ["MAX_AUTO_BATCH", "auto_batch_size", "batch_cap", "best_batch_size", "chosen_batch_size", "decode_gain",
           "decode_step_seconds", "extract_iter", "kv_memory", "planned_bytes", "predicted_gain"]

Result = Extraction | EdgeSLMError

#: The largest ``batch_size`` chosen automatically (memory permitting, see :func:`auto_batch_size`);
#: :func:`best_batch_size` takes a size this large only where the engine's decode rate still grows.
MAX_AUTO_BATCH = 32
#: :func:`best_batch_size` doubles the batch while one decode step of the larger batch gives at least
#: this many times the tokens per second of the smaller one. A larger batch also costs what the
#: short probe does not see (attention over a larger cache, a longer tail when the documents run
#: out, memory): Gemma-3-270M on 2 cores, 64 documents, gains 2.88x / 3.60x / 3.94x at 8 / 16 / 32
#: sequences, extract_many 1.26x / 1.56x / 1.44x the one-at-a-time rate.
MIN_DOUBLING_GAIN = 1.1
#: Share of the available memory the KV caches of a batch may take when the size is automatic.
KV_MEMORY_SHARE = 0.25
#: The most sequences one batch holds (llama.cpp's limit on sequences per context); a larger
#: ``batch_size`` decodes this many at once.
MAX_SEQUENCES = 256
#: Tokens one engine call of a batch takes at most (the compute buffer is sized for it).
FORK_BATCH = 512
#: A request of at least this many tokens looks for a prefix another sequence holds.
SHARE_MIN_TOKENS = 16
#: Where items cannot be measured first (:func:`chosen_batch_size`: the server's requests), they decode
#: together only when one decode step of the chosen batch gives at least this many times the tokens per
#: second of a step of one sequence (measured once per model). Prompt tokens gain nothing from batching
#: once the engine is compute-bound, so a smaller decode gain does not pay: SmolLM2-135M on 2 CPU cores
#: measured 1.9x / 2.3x / 2.6x per decode step at 8 / 16 / 32 sequences and 1.08x to 1.14x on whole
#: extractions (64 documents); Gemma-3-270M 3.6x per step at 16 and 1.56x on whole extractions.
MIN_DECODE_GAIN = 3.0
#: ``extract_iter(batch_size=None)`` runs its first items one at a time (the second, with the
#: prompt prefix cached, is measured), then batches the rest only where the whole extraction is
#: predicted to gain at least this much (:func:`predicted_gain`); the decode step alone overstates
#: it (prompt work does not shrink, one at a time drafts copied text, a real round costs more than
#: the probe's short-context step).
MIN_PREDICTED_GAIN = 1.15
#: Items ``extract_iter(batch_size=None)`` runs one at a time before it decides (the last is measured).
MEASURE_ITEMS = 2
#: Share of a decode step's probed gain that whole batched extractions realize (rounds over real
#: contexts, rounds short of the full batch, per-sequence work between rounds): fitted on 2 cores
#: (SmolLM2-135M 0.62, a random-weight 1.5B Q4_K_M 0.58, Gemma-3-270M 0.24).
BATCH_EFFICIENCY = 0.6
#: Below this probed decode gain no batch is tried.
MIN_PROBE_GAIN = 1.3
#: The engine is probed for ``batch_size=None`` only where the most batching could save on the
#: items left is at least this many times the probe's estimated cost (2.3 s for SmolLM2-135M on 2
#: cores: 32 of its documents take 20 s one at a time).
PROBE_PAYBACK = 3.0

_STEPS: weakref.WeakKeyDictionary[Backend, dict[int, tuple[float, float]]] = weakref.WeakKeyDictionary()


def _texts(texts: Iterable[Any]) -> Iterable[Any]:
    if isinstance(texts, (str, bytes)):
        raise InvalidRequestError("texts must be a list (or iterable) of strings, not one string",
                                  hint="pass [text] for a single document, or use extract()")
    return texts


def _can_fork(engine: Backend) -> bool:
    return type(engine).fork is not Backend.fork


def planned_bytes(engine: Backend, n: int, n_ctx: int) -> int:
    """Memory a batch of *n* sequences of *n_ctx* tokens takes beyond the model: the KV cache of
    every sequence (the engine allocates and clears it whole) and the engine's compute buffer,
    which holds the logits of up to :data:`FORK_BATCH` tokens."""
    return engine.kv_bytes_per_token() * n * n_ctx + FORK_BATCH * engine.n_vocab * 4


def auto_batch_size(engine: Backend, n_ctx: int, available_bytes: int | None = None) -> int:
    """How many sequences to decode at once: as many as :func:`planned_bytes` lets fit in
    :data:`KV_MEMORY_SHARE` of the available memory, at most :data:`MAX_AUTO_BATCH`; 1 when the
    engine cannot hold several sequences."""
    if not _can_fork(engine):
        return 1
    if available_bytes is None:
        available_bytes = _available(engine)
    per_seq = engine.kv_bytes_per_token() * n_ctx
    if per_seq <= 0:
        return min(4, MAX_AUTO_BATCH)
    room = available_bytes * KV_MEMORY_SHARE - planned_bytes(engine, 0, n_ctx)
    return max(1, min(MAX_AUTO_BATCH, int(room // per_seq)))


def _available(engine: Backend) -> int:
    from ..runtime import hardware

    on_gpu = getattr(engine, "device", "cpu") == "gpu"
    return kv_memory(hardware.ram()[1], hardware.nvidia_gpus() if on_gpu else ())


def kv_memory(ram_available: int, gpus: Iterable[Any] = ()) -> int:
    """Memory a batch's KV caches may come out of, in bytes: *ram_available*, and no more than the
    free memory of the CUDA GPUs among *gpus* (those a model runs on), where llama.cpp keeps the
    caches of offloaded layers."""
    cuda = sum(g.memory_free for g in gpus if g.api == "cuda")
    return min(ram_available, cuda) if cuda > 0 else ram_available


def decode_step_seconds(engine: Backend, n: int) -> tuple[float, float]:
    """Seconds of one decode step of one sequence and of *n* sequences (a token each, 2 tokens
    cached), best of two after a warm-up, on a small context forked for it (freed after); kept per
    model."""
    known = _STEPS.setdefault(engine.vocab_owner, {})
    if n in known:
        return known[n]
    tok = engine.bos_id if engine.bos_id is not None else 0
    fork = engine.fork(n, n * 64)
    try:

        def step(k: int) -> float:
            t = time.perf_counter()
            fork.eval_many([(s, [tok]) for s in range(k)])
            return time.perf_counter() - t

        fork.eval_many([(s, [tok] * 2) for s in range(n)])  # a short context: cheap to probe
        step(1), step(n)  # warm-up: first use of each batch shape
        known[n] = times = (min(step(1), step(1)), min(step(n), step(n)))
    finally:
        fork.close()
    return times


def decode_gain(engine: Backend, n: int) -> float:
    """Tokens per second of one decode step of *n* sequences over that of one sequence
    (:func:`decode_step_seconds`)."""
    one, many = decode_step_seconds(engine, n)
    return n * one / max(many, 1e-9)


def best_batch_size(engine: Backend, cap: int) -> tuple[int, float]:
    """The batch size, at most *cap*, where the engine decodes fastest, and its
    :func:`decode_gain`: from 8 (or *cap*), doubled while a step of the doubled batch gives at least
    :data:`MIN_DOUBLING_GAIN` times the tokens per second (each size measured once per model)."""
    return _best_size(cap, lambda n: decode_gain(engine, n))


def _best_size(cap: int, gain_of: Callable[[int], float]) -> tuple[int, float]:
    n, gain = 1, 1.0
    for size in _probe_sizes(cap):
        more = gain_of(size)
        if n > 1 and more < gain * MIN_DOUBLING_GAIN:
            break
        n, gain = size, more
    return n, gain


def chosen_batch_size(engine: Backend, n_ctx: int, batch_size: int | None = None, total: int | None = None) -> int:
    """The sequences to decode together without measuring items first (``edgeslm serve``'s
    requests; ``extract_iter`` with a *batch_size*): *batch_size*, or with ``None`` the
    :func:`best_batch_size` within :func:`auto_batch_size`, and 1 unless its :func:`decode_gain`
    reaches :data:`MIN_DECODE_GAIN`; never more than *total* items."""
    if batch_size is not None:
        return batch_size if total is None else min(batch_size, max(1, total))
    n, gain = best_batch_size(engine, batch_cap(engine, n_ctx, total))
    return n if gain >= MIN_DECODE_GAIN else 1


def predicted_gain(usage: Any, step_one_s: float, decode_gain: float, efficiency: float = BATCH_EFFICIENCY) -> float:
    """Whole-extraction speed-up batching is predicted to give, from one extraction done one at a
    time (*usage*: its prompt time share ``p`` and decode rate) and the engine's probed step: one
    step of one sequence (*step_one_s*) and the batch's *decode_gain*. The prompt part is taken as
    not gaining (compute-bound already); the decode part gains ``decode_gain * efficiency`` over the
    probed one-sequence rate, which the measured decode rate may beat (drafting) or trail::

        1 / (p + (1 - p) * d / (decode_gain * efficiency)),  d = measured rate * step_one_s
    """
    total, ttft, rate = _timings(usage)
    if total <= 0 or rate <= 0 or step_one_s <= 0 or decode_gain <= 0:
        return 1.0
    p = min(1.0, max(0.0, ttft / total))
    d = rate * step_one_s
    return 1.0 / (p + (1.0 - p) * d / (decode_gain * efficiency))


def _timings(usage: Any) -> tuple[float, float, float]:
    """``(total seconds, seconds to the first token, decode tokens/s)`` of a :class:`Usage` (0 where unknown)."""
    return tuple(float(getattr(usage, k, 0.0) or 0.0)  # type: ignore[return-value]
                 for k in ("total_time_s", "time_to_first_token_s", "decode_tokens_per_s"))


def batch_cap(engine: Backend, n_ctx: int, total: int | None = None) -> int:
    """The most sequences ``batch_size=None`` considers: :func:`auto_batch_size`, and never more
    than *total* items."""
    cap = auto_batch_size(engine, n_ctx)
    return cap if total is None else min(cap, max(1, total))


def extract_iter(
    model: Any, texts: Iterable[Any], schema: Any, *, progress: bool = False, total: int | None = None,
    batch_size: int | None = None, **extract_kwargs: Any,
) -> Iterator[tuple[int, Result]]:
    """Yield ``(index, Extraction or EdgeSLMError)`` for each of *texts* as it finishes."""
    from ._validate import check_int
    from .extract import prepare_schema

    prepare_schema(schema)  # a schema that cannot be served fails the whole call, before any work
    check_int(batch_size, "batch_size", minimum=1, allow_none=True, hint="pass batch_size=1 for one at a time")
    items = _texts(texts)
    if total is None and isinstance(items, Sequence):
        total = len(items)
    pairs: Iterator[tuple[int, Any]] = iter(enumerate(items))
    bar = _Progress(total) if progress else None
    try:
        with model._gen.holding() as engine:  # raises ModelClosedError once closed
            n = 1 if batch_size is None else chosen_batch_size(engine, model.n_ctx, batch_size, total)
        one_s: float | None = None
        if batch_size is None and _can_fork(engine) and (total is None or total > MEASURE_ITEMS + 1):
            # measured, not assumed: the first items one at a time (the second with the prefix cached),
            # then the engine is probed only where a batch could pay the probe back, and the rest are
            # batched only where the whole extraction is predicted to gain
            last: Any = None
            for _ in range(MEASURE_ITEMS):
                try:
                    i, text = next(pairs)
                except StopIteration:
                    return
                t_item = time.perf_counter()
                last = _extract_one(model, i, text, schema, extract_kwargs)
                one_s = time.perf_counter() - t_item
                if bar is not None:
                    bar.advance(last)
                yield i, last
            left = None if total is None else total - MEASURE_ITEMS
            size, gain, step_one = 1, 1.0, 0.0
            with model._gen.holding() as engine:
                if isinstance(last, Extraction) and _probe_pays(last.usage, left, model.n_ctx, engine):
                    size, gain, step_one = _auto_plan(engine, model.n_ctx, left)
            if size > 1 and gain >= MIN_PROBE_GAIN and predicted_gain(last.usage, step_one, gain) >= MIN_PREDICTED_GAIN:
                n = size
        run = _batched(model, pairs, schema, n, extract_kwargs, auto=batch_size is None, one_s=one_s) if n > 1 and \
            _can_fork(engine) else _one_by_one(model, pairs, schema, extract_kwargs)
        for i, result in run:
            if bar is not None:
                bar.advance(result)
            yield i, result
    finally:
        if bar is not None:
            bar.close()


def _probe_pays(usage: Any, left: int | None, n_ctx: int, engine: Backend) -> bool:
    """Whether probing the engine's batched decode rate can pay for itself on the *left* items
    (``None``: an open-ended stream, which it can): at best a step of N sequences would give N
    times the tokens/s (:func:`predicted_gain` with that gain and the measured item's timings); what
    that saves on the items left must be at least :data:`PROBE_PAYBACK` times the probe's cost,
    estimated from the measured item (per probed size: 6 evaluated tokens per sequence at its
    prompt rate and 8 steps at its decode rate), or nothing where the probe's figures are kept."""
    if left is None:
        return True
    cap = batch_cap(engine, n_ctx, left)
    sizes = _probe_sizes(cap)
    if not sizes:
        return False
    if all(n in _STEPS.get(engine.vocab_owner, {}) for n in sizes):
        return True  # measured already: free
    total, ttft, rate = _timings(usage)
    evaluated = int(getattr(usage, "prompt_tokens", 0) or 0) - int(getattr(usage, "reused_prompt_tokens", 0) or 0)
    if total <= 0 or ttft <= 0 or evaluated <= 0 or rate <= 0:
        return True
    probe_s = sum(6 * n * ttft / evaluated + 8 / rate for n in sizes)
    best = predicted_gain(usage, 1.0 / rate, float(cap))  # the most any batch of cap could give
    return left * total * (1.0 - 1.0 / best) >= PROBE_PAYBACK * probe_s


def _probe_sizes(cap: int) -> list[int]:
    """The sizes :func:`best_batch_size` tries under *cap*, in order: 8 (or *cap*), doubled, capped."""
    out, n = [], min(8, cap)
    while n > 1:
        out.append(n)
        if n >= cap:
            break
        n = min(2 * n, cap)
    return out


def _auto_plan(engine: Backend, n_ctx: int, total: int | None) -> tuple[int, float, float]:
    """``(size, decode gain, seconds of a one-sequence step)`` the probe finds for ``batch_size=None``
    on an engine that can fork."""
    n, gain = best_batch_size(engine, batch_cap(engine, n_ctx, total))
    return n, gain, (decode_step_seconds(engine, n)[0] if n > 1 else 0.0)


def _extract_one(model: Any, i: int, text: Any, schema: Any, kwargs: dict[str, Any]) -> Result:
    try:
        if not isinstance(text, str):
            raise InvalidRequestError(f"texts[{i}] is a {type(text).__name__}, not a string",
                                      hint="pass the documents as strings")
        return model.extract(text, schema, **kwargs)
    except ModelClosedError:
        raise
    except EdgeSLMError as exc:
        return exc


def _one_by_one(model: Any, pairs: Iterator[tuple[int, Any]], schema: Any,
                kwargs: dict[str, Any]) -> Iterator[tuple[int, Result]]:
    for i, text in pairs:
        yield i, _extract_one(model, i, text, schema, kwargs)


# ---------------------------------------------------------------------------------- batched decoding


class _Batcher:
    """Evaluates what several worker threads ask of one multi-sequence context, as one batch.

    A worker is *active* while it holds its model (inside an extraction attempt, between its
    evaluations). A round runs when every active worker waits on an evaluation. Rounds run on one
    engine thread of their own: an engine built with OpenMP keeps a team of threads per calling
    thread, and teams left idle by other callers would spin on the cores the batch needs."""

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
        """End the batch: evaluations waiting, and every later call of a view, raise ``_Cancelled``."""
        with self.cv:
            self._closed = True
            for seq in self.pending:
                self.errors[seq] = _Cancelled()
            self.pending.clear()
            self.cv.notify_all()

    def close(self) -> None:
        self.cancel()
        self._thread.join()

    def live(self) -> None:
        """Raise ``_Cancelled`` once the batch has ended (call with ``cv`` held)."""
        if self._closed:
            raise _Cancelled()

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
                        self.errors[seq] = _Cancelled()
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


class _SeqView(Backend):
    """One sequence of a multi-sequence context, seen as a single-sequence backend: evaluations go
    through the :class:`_Batcher`, every other engine call through its lock."""

    def __init__(self, batcher: _Batcher, seq: int, n_ctx: int) -> None:
        super().__init__()
        e = batcher.engine
        self._b, self._e, self.seq = batcher, e, seq
        for k in ("name", "device", "path", "n_vocab", "bos_id", "eos_id", "add_bos", "chat_template", "n_ctx_train",
                  "plan", "metadata"):
            setattr(self, k, getattr(e, k))
        self.n_ctx = n_ctx

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


class _SeqGeneration(Generation):
    """A worker's generation service: holding it makes its sequence active in the batch."""

    def __init__(self, view: _SeqView, name: str) -> None:
        super().__init__(view, name)
        self._view = view

    def acquire(self, adapter: str | None = None, *, keep: bool = False) -> Backend:
        engine = super().acquire()  # the batch's context has the adapter of the call that forked it
        self._view._b.enter(self._view.seq)
        return engine

    def release(self) -> None:
        self._view._b.leave(self._view.seq)
        super().release()


_DONE = object()
_WAKE = object()


class _Cancelled(BaseException):
    """Raised in a worker whose batch was stopped: not a failure of its item (never yielded)."""


def _open_fork(engine: Backend, n: int, n_ctx: int, auto: bool) -> tuple[Backend | None, int]:
    """A context of *n* sequences of *n_ctx* tokens and *n*; one the engine cannot allocate is
    asked again with half the sequences when the size was automatic (``None, 1`` once none of 2
    or more fits), and is an :class:`InsufficientMemoryError` when the caller chose it (refused
    before the engine is asked when its KV caches cannot fit in the available memory). At most
    :data:`MAX_SEQUENCES`."""
    n = min(n, MAX_SEQUENCES)
    if not auto and n > 1:
        need, room = planned_bytes(engine, n, n_ctx), _available(engine)
        if need > room:
            raise InsufficientMemoryError(
                f"a batch of {n:,} sequences of {n_ctx:,} tokens needs {need / 2**30:,.2f} GiB for its KV caches; "
                f"{room / 2**30:,.2f} GiB of memory is available",
                hint="pass a smaller batch_size= (or batch_size=None to have one chosen), or load the model with a "
                "smaller n_ctx=",
            )
    while n > 1:
        try:
            return engine.fork(n, n * n_ctx), n
        except BackendUnavailableError as exc:
            if not auto:
                raise InsufficientMemoryError(
                    f"a batch of {n:,} sequences of {n_ctx:,} tokens does not fit in memory: {exc.message}",
                    hint="pass a smaller batch_size= (or batch_size=None to have one chosen), or load the model "
                    "with a smaller n_ctx=",
                ) from exc
            n //= 2
    return None, 1


def _batched(model: Any, pairs: Iterator[tuple[int, Any]], schema: Any, n: int,
             kwargs: dict[str, Any], *, auto: bool, one_s: float | None = None) -> Iterator[tuple[int, Result]]:
    """Batched decoding of *pairs*; with *one_s* (seconds an item took one at a time, measured), the
    batch is checked once its first *n* items are done: slower than that, it takes no more items and
    the rest run one at a time."""
    run = _BatchRun(model, pairs, schema, kwargs)
    if not run.start(n, auto):  # not even 2 sequences fit: one at a time
        yield from _one_by_one(model, pairs, schema, kwargs)
        return
    t0, done = time.perf_counter(), 0
    try:
        for got in run:
            yield got
            done += 1
            if one_s is not None and done == n and (time.perf_counter() - t0) / done > one_s:
                run.draining = True  # measured slower than one at a time: finish these, then one by one
    finally:
        run.shutdown()
    if run.draining:
        yield from _one_by_one(model, pairs, schema, kwargs)


class _BatchRun:
    """One running batch: worker threads over the sequences of a forked context, results in a queue.

    It holds the model from :meth:`start` to :meth:`shutdown`. :meth:`cancel` (``Model.close()``
    from any thread, or another call on the model from the thread that started it) stops it within
    an engine round, from whichever thread calls it: the workers' unfinished items are dropped, the
    context freed, the model released; the iterator then returns the results already finished and
    raises the cancel's error."""

    def __init__(self, model: Any, items: Iterable[tuple[int, Any]], schema: Any, kwargs: dict[str, Any]) -> None:
        self.model, self.items, self.schema, self.kwargs = model, items, schema, kwargs
        self.main = model._gen
        self.out: queue.Queue[Any] = queue.Queue()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.reading: list[bool] = []  # per worker: inside the caller's iterable (cannot be interrupted)
        self.fork: Backend | None = None
        self.batcher: _Batcher | None = None
        self.running = 0
        self.error: BaseException | None = None
        self._state = threading.Lock()
        self._ended = False
        self.draining = False  # set: workers take no new item, the batch ends when theirs are done

    def start(self, n: int, auto: bool) -> bool:
        """Take the model, open the context and start the workers; ``False`` (model released) when not
        even 2 sequences fit."""
        from ..decoding.constrain import constraints

        engine = self.main.acquire()  # the model is held for the whole batch
        try:
            cache = constraints(engine)  # built once here, not raced by the workers
            _ = cache.tokenizer, cache.closing, cache.eog
            self.fork, n = _open_fork(engine, n, self.model.n_ctx, auto)
        except BaseException:
            self.main.release()
            raise
        if self.fork is None:
            self.main.release()
            return False
        self.batcher = _Batcher(self.fork)
        self.source = iter(self.items)  # (index, item) pairs
        self.source_lock = threading.Lock()
        self.reading = [False] * n
        self.threads = [threading.Thread(target=self._work, args=(s,), name=f"edgeslm-batch-{s}", daemon=True)
                        for s in range(n)]
        self.running = n
        self.main.add_batch(self)
        for t in self.threads:
            t.start()
        return True

    def _work(self, seq: int) -> None:
        model, batcher = self.model, self.batcher
        assert batcher is not None
        view = _SeqView(batcher, seq, model.n_ctx)
        worker = type(model)(view, name=model.name, template=model.template, info=model.info,
                             tool_format=model.tool_format, escalation=model.escalation)
        worker._gen = _SeqGeneration(view, model.name)
        try:
            while not self.stop.is_set():
                got = self._take(seq)
                if got is None or self.stop.is_set():
                    return
                i, item = got
                try:
                    self.out.put((i, self._do(worker, i, item)))
                except _Cancelled:
                    return
                except BaseException as exc:  # not an EdgeSLMError of this item: a bug, or closed
                    self.out.put(exc)
                    return
        finally:
            self.out.put(_DONE)

    def _take(self, seq: int) -> tuple[int, Any] | None:
        """The next item for worker *seq* (``None``: no more, or stopped)."""
        while not self.source_lock.acquire(timeout=0.05):
            if self.stop.is_set():
                return None
        try:
            if self.stop.is_set() or self.draining:
                return None
            self.reading[seq] = True
            try:
                return next(self.source)  # type: ignore[no-any-return]
            finally:
                self.reading[seq] = False
        except StopIteration:
            return None
        except BaseException as exc:  # the caller's iterable failed: end the batch with it
            self.out.put(exc)
            return None
        finally:
            self.source_lock.release()

    def _do(self, worker: Any, i: int, item: Any) -> Any:
        return _extract_one(worker, i, item, self.schema, self.kwargs)

    def __iter__(self) -> Iterator[tuple[int, Result]]:
        return self

    def __next__(self) -> tuple[int, Result]:
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
        """Stop the workers, free the context, release the model; idempotent, from any thread."""
        with self._state:
            if self._ended or self.batcher is None:
                return
            self._ended = True
        batcher, fork = self.batcher, self.fork
        self.stop.set()
        batcher.cancel()  # evaluations waiting, and every later one, raise _Cancelled in their worker
        for seq, t in enumerate(self.threads):
            if t is not threading.current_thread() and not self.reading[seq]:
                t.join()  # a worker inside the caller's iterable returns when it does, touching nothing
        batcher.close()
        with batcher.cv:  # the views check the batch under this lock before touching the context
            if fork is not None:
                fork.close()
        self.main.remove_batch(self)
        self.main.release()


class _Progress:
    """A rich progress bar: items done, valid, items/s."""

    def __init__(self, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn("extract"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[rate]} items/s, {task.fields[failed]} failed"),
                           TimeElapsedColumn(), transient=False, console=Console(stderr=True))
        self._task = self._p.add_task("extract", total=total, rate="-", failed=0)
        self._t0 = time.perf_counter()
        self._n = 0
        self._failed = 0
        self._p.start()

    def advance(self, result: Result) -> None:
        self._n += 1
        self._failed += isinstance(result, EdgeSLMError)
        rate = self._n / max(1e-9, time.perf_counter() - self._t0)
        self._p.update(self._task, advance=1, rate=f"{rate:.2f}", failed=self._failed)

    def close(self) -> None:
        self._p.stop()
