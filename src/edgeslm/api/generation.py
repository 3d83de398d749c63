"""The one generation service behind ``chat``, ``generate``, ``extract`` and tool calls.

A :class:`Generation` belongs to one :class:`~edgeslm.Model`. It holds the model's lock (one call
at a time; a stream holds it until it ends), builds prompt tokens, streams plain text, and runs
constrained attempts with the one retry policy below, summing the usage of every attempt.
Extraction and tool calls supply only what differs: how one attempt is constrained, and how its
output is checked.

Retry policy (:func:`default_retries`): an attempt whose output does not check (cut off by
``max_tokens``, or failing validation) is generated again, up to 2 more times when the grammar
enforces the schema exactly (then only a cut-off can fail) and 3 when it enforces a relaxed form
(then validation of the keywords it could not enforce can fail too). Retries sample (temperature
0.7, a seed derived from the attempt, see :func:`~edgeslm.decoding.sampling.retry_params`), so a
greedy first attempt that failed is not repeated word for word. Measured on 215 realistic
JSONSchemaBench schemas with SmolLM2-135M: no extraction succeeded later than its third attempt.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .._errors import ContextLengthError, InvalidRequestError, ModelClosedError
from ..backends.base import Backend
from ..decoding.loop import GenStats, generate_steps, stream_text
from ..decoding.sampling import Sampler, SamplingParams, retry_params
from ._validate import check_text
from .results import ChatChunk, ChatStream, Usage

__all__ = ["RETRIES_EXACT", "RETRIES_RELAXED", "Attempts", "Generation", "SequenceGeneration", "StreamHandle",
           "default_retries",
           "sum_usage", "usage_of"]

#: Retries when the grammar enforces the schema exactly, and when it enforces a relaxed form.
RETRIES_EXACT = 2
RETRIES_RELAXED = 3


def default_retries(exact: bool) -> int:
    """The number of retries when the caller gives none (see the module docstring)."""
    return RETRIES_EXACT if exact else RETRIES_RELAXED


class Outcome(Protocol):
    """What one attempt returns: at least its statistics."""

    stats: GenStats


O = TypeVar("O", bound=Outcome)  # noqa: E741


def usage_of(stats: GenStats) -> Usage:
    """The :class:`Usage` of one generation."""
    end = stats.finished_at or time.perf_counter()
    return Usage(
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
        reused_prompt_tokens=stats.reused_tokens,
        forced_tokens=stats.forced_tokens,
        time_to_first_token_s=stats.ttft_s,
        decode_tokens_per_s=stats.decode_tokens_per_s,
        total_time_s=end - stats.started,
    )


def sum_usage(all_stats: Sequence[GenStats]) -> Usage:
    """The usage of several attempts at one request: the prompt and first-token time of the first,
    completion and forced tokens and time summed over all."""
    usage = usage_of(all_stats[0])
    usage.completion_tokens = sum(s.completion_tokens for s in all_stats)
    usage.forced_tokens = sum(s.forced_tokens for s in all_stats)
    usage.total_time_s = sum(usage_of(s).total_time_s for s in all_stats)
    return usage


@dataclass
class Attempts(Generic[O]):
    """The result of :meth:`Generation.constrained`: the checked value, or the last errors."""

    value: Any
    """What ``check`` made of the last attempt (``None`` when it failed)."""
    last: O
    """The last attempt's outcome (its text, statistics...)."""
    count: int
    """How many attempts ran."""
    stats: list[GenStats]
    """Every attempt's statistics, in order."""
    errors: list[str]
    """Empty on success, else the last attempt's errors."""

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def usage(self) -> Usage:
        """The usage of all the attempts (see :func:`sum_usage`)."""
        return sum_usage(self.stats)


class StreamHandle:
    """Ties a running stream to the :class:`~edgeslm.ChatStream` the app holds, weakly (the stream is
    closed when the app drops it), so the model's next call from the same thread can close it first
    instead of waiting for the lock it holds."""

    __slots__ = ("_ref",)

    def __init__(self) -> None:
        self._ref: weakref.ref[Any] | None = None

    def bind(self, stream: Any) -> None:
        self._ref = weakref.ref(stream)

    def close(self) -> None:
        stream = self._ref() if self._ref is not None else None
        if stream is not None:
            stream.close()


class Generation:
    """The lock, the stream and the runs of one model's engine (see the module docstring)."""

    def __init__(self, engine: Backend, name: str) -> None:
        self._engine: Backend | None = engine
        self.name = name
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._open_stream: StreamHandle | None = None
        self._controls: dict[int, bool] = {}  # token id -> whether it is a control token
        self._batches: dict[Any, int] = {}  # running batches (extract_iter) -> the thread that started each
        self._batches_lock = threading.Lock()

    # ------------------------------------------------------------------ the lock and the stream
    @property
    def closed(self) -> bool:
        return self._engine is None

    def stream(self, chunks: Callable[[StreamHandle], Iterator[ChatChunk]]) -> ChatStream:
        """A :class:`~edgeslm.ChatStream` over ``chunks(handle)``, a generator that holds the model
        (``holding(handle)``) while it runs."""
        handle = StreamHandle()
        s = ChatStream(chunks(handle))
        handle.bind(s)
        return s

    def constrained(
        self,
        attempt: Callable[[int, SamplingParams], O],
        check: Callable[[O], tuple[Any, list[str]]],
        params: SamplingParams,
        retries: int,
        *,
        first: O | None = None,
    ) -> Attempts[O]:
        """Constrained generation with checks and retries, the one way extraction, tool calls and
        batched items run (see the module docstring): ``attempt(i, params_i)`` until ``check`` finds
        no error, at most ``1 + retries`` times (``params_i``: the retry sampling of
        :func:`~edgeslm.decoding.sampling.retry_params`). *first*: the outcome of attempt 0 when the
        caller ran it already (a stream shows its text as it comes)."""
        all_stats: list[GenStats] = []
        errors: list[str] = []
        out: O | None = None
        for i in range(retries + 1):
            out = first if i == 0 and first is not None else attempt(i, retry_params(params, i) if i else params)
            all_stats.append(out.stats)
            value, errors = check(out)
            if not errors:
                return Attempts(value, out, i + 1, all_stats, [])
        assert out is not None
        return Attempts(None, out, retries + 1, all_stats, errors)

    def end_own_stream(self) -> None:
        """Close an unfinished stream opened by this thread, and stop its unfinished batches: waiting
        for the lock they hold would deadlock."""
        me = threading.get_ident()
        self._close_own_stream()
        with self._batches_lock:
            own = [b for b, owner in self._batches.items() if owner == me]
        for b in own:
            b.cancel(InvalidRequestError(
                f"model {self.name!r}: this batch was stopped because its thread made another call on the model "
                "while the batch iterator was unfinished (items finished before were returned)",
                hint="finish or close the extract_iter() iterator before other calls on the same thread, or "
                "consume it in a thread of its own"))

    def _close_own_stream(self) -> None:
        if self._owner == threading.get_ident() and self._open_stream is not None:
            self._open_stream.close()

    def add_batch(self, batch: Any) -> None:
        """Register a running batch (it holds the lock): :meth:`close` and this thread's next call stop
        it with ``batch.cancel(error)``."""
        with self._batches_lock:
            self._batches[batch] = threading.get_ident()

    def remove_batch(self, batch: Any) -> None:
        with self._batches_lock:
            self._batches.pop(batch, None)

    #: The LoRA adapter this service decodes with (``None``: the base weights); see :meth:`view`.
    adapter: str | None = None

    def acquire(self, adapter: str | None = None, *, keep: bool = False) -> Backend:
        """Take the model (waiting for another call to end), with *adapter* switched on (``None``:
        the base weights; ``keep=True``: whatever is on, for calls that evaluate nothing); raises
        ``ModelClosedError`` once closed."""
        self.end_own_stream()
        self._lock.acquire()
        engine = self._engine
        if engine is None:
            self._lock.release()
            raise ModelClosedError(f"model {self.name!r} is closed", hint="load it again with edgeslm.load()")
        try:
            if not keep:
                engine.use_adapter(adapter)
        except BaseException:
            self._lock.release()
            raise
        self._owner = threading.get_ident()
        return engine

    def release(self) -> None:
        self._owner = None
        self._open_stream = None
        self._lock.release()

    @contextmanager
    def holding(self, stream: StreamHandle | None = None, adapter: str | None = None, *,
                keep: bool = False) -> Iterator[Backend]:
        """Hold the model for one call (with *adapter* on, see :meth:`acquire`); *stream*: the
        stream that holds it, when one does."""
        engine = self.acquire(adapter, keep=keep)
        try:
            self._open_stream = stream
            yield engine
        finally:
            self.release()

    def view(self, adapter: str | None) -> Generation:
        """This service with *adapter* on for every call made through it (one engine, one lock)."""
        return self if adapter is None else _AdapterGeneration(self, adapter)

    def close(self) -> None:
        """Free the engine and what constrained decoding kept for it, stopping running batches
        first (they end within an engine round). Idempotent."""
        self._close_own_stream()
        with self._batches_lock:
            running = list(self._batches)
        for b in running:
            b.cancel(ModelClosedError(f"model {self.name!r} was closed while this batch ran (items finished "
                                      "before were returned)", hint="load the model again with edgeslm.load()"))
        with self._lock:
            engine, self._engine = self._engine, None
            self._controls = {}
        if engine is not None:
            _free(engine)

    def collect(self) -> None:
        """Garbage collection of the model: free the engine unless a call holds it."""
        engine = self._engine
        if engine is not None and not self._lock.locked():
            self._engine = None
            _free(engine)

    # ------------------------------------------------------------------ prompts
    def prompt_tokens(self, engine: Backend, segments: Sequence[tuple[str, bool]]) -> list[int]:
        """Tokens of rendered prompt *segments* (``(text, parse control tokens)``), BOS added when
        the model wants one."""
        check_fits(sum(len(text) for text, _ in segments), engine.n_ctx)
        toks: list[int] = []
        for text, special in segments:
            check_text(text, "the prompt")  # a lone surrogate from anywhere (tool descriptions...)
            toks.extend(engine.tokenize(text, special=special))
        if engine.add_bos and engine.bos_id is not None and (not toks or toks[0] != engine.bos_id):
            toks.insert(0, engine.bos_id)
        return toks

    def control_ids(self, engine: Backend, text: str) -> list[int]:
        """The control tokens in *text* when it is parsed for them (``<|im_start|>``...), in order."""
        out = []
        for t in engine.tokenize(text, special=True):
            control = self._controls.get(t)
            if control is None:
                piece = engine.token_text(t)
                # a control token: its text gives it only when parsed for control tokens
                special = engine.tokenize(piece, special=True) if piece else []
                control = self._controls[t] = special == [t] and engine.tokenize(piece, special=False) != special
            if control:
                out.append(t)
        return out

    # ------------------------------------------------------------------ plain text
    def text_stream(
        self, prompt_fn: Callable[[Backend], list[int]], params: SamplingParams, max_tokens: int,
        stops: list[str], handle: StreamHandle | None = None,
    ) -> Iterator[ChatChunk]:
        """Stream a free-text reply: deltas, then a last chunk with the finish reason and usage."""
        cid = new_id()
        with self.holding(handle) as engine:
            stats = GenStats()
            tokens = prompt_fn(engine)
            steps = generate_steps(engine, tokens, Sampler(params), max_tokens, stats=stats)
            try:
                for d in stream_text(steps, stops, stats):
                    if d.finish_reason is None:
                        yield ChatChunk(d.text, model=self.name, id=cid)
                    else:
                        if d.text:
                            yield ChatChunk(d.text, model=self.name, id=cid)
                        yield ChatChunk("", d.finish_reason, usage_of(stats), model=self.name, id=cid)
            finally:
                steps.close()


class _AdapterGeneration(Generation):
    """A model's generation service seen through one adapter: the same engine, lock and caches;
    every call it makes switches the adapter on (a no-op when it already is)."""

    def __init__(self, main: Generation, adapter: str) -> None:  # no super().__init__: state is main's
        self._main = main
        self.name = main.name
        self.adapter = adapter

    _engine = property(lambda self: self._main._engine)  # type: ignore[assignment]
    _controls = property(lambda self: self._main._controls)  # type: ignore[assignment]
    closed = property(lambda self: self._main.closed)  # type: ignore[assignment]

    def acquire(self, adapter: str | None = None, *, keep: bool = False) -> Backend:
        return self._main.acquire(self.adapter, keep=keep)

    def release(self) -> None:
        self._main.release()

    @contextmanager
    def holding(self, stream: StreamHandle | None = None, adapter: str | None = None, *,
                keep: bool = False) -> Iterator[Backend]:
        with self._main.holding(stream, self.adapter, keep=keep) as engine:
            yield engine

    def view(self, adapter: str | None) -> Generation:
        return self._main.view(adapter)

    def end_own_stream(self) -> None:
        self._main.end_own_stream()

    def add_batch(self, batch: Any) -> None:
        self._main.add_batch(batch)

    def remove_batch(self, batch: Any) -> None:
        self._main.remove_batch(batch)

    def close(self) -> None:
        self._main.close()

    def collect(self) -> None:  # the model, not a view of it, owns the engine
        pass


class SequenceGeneration(Generation):
    """The generation service of a model bound to one sequence of a batch: holding it makes its
    sequence active in the batch (:class:`~edgeslm.decoding.scheduler.SequenceView`); the batch's
    context has the adapter of the call that forked it."""

    def __init__(self, view: Any, name: str) -> None:
        super().__init__(view, name)
        self._view = view

    def acquire(self, adapter: str | None = None, *, keep: bool = False) -> Backend:
        engine = super().acquire(keep=True)
        self._view.hold()
        return engine

    def release(self) -> None:
        self._view.let_go()
        super().release()


#: No tokenizer puts more than this many bytes (so characters) in one token: a text longer than this
#: many characters per token of context cannot fit, and is refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 32


def check_fits(n_chars: int, n_ctx: int) -> None:
    """Refuse, in constant time, a prompt of *n_chars* characters that cannot fit in *n_ctx* tokens
    (issue #24: a 100 MB text was tokenized whole, 142 s and 5.6 GB, before the context check)."""
    if n_ctx > 0 and n_chars > MAX_CHARS_PER_TOKEN * n_ctx:
        raise ContextLengthError(
            f"the prompt is {n_chars:,} characters; the context window is {n_ctx:,} tokens, which hold at "
            f"most about {MAX_CHARS_PER_TOKEN * n_ctx:,} characters",
            n_prompt=n_chars // MAX_CHARS_PER_TOKEN,  # at least this many tokens
            n_ctx=n_ctx,
            hint="shorten or split the input, or load the model with a larger n_ctx= (up to the model's "
            "trained context length)",
        )


def new_id() -> str:
    """An OpenAI-style completion id."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _free(engine: Backend) -> None:
    from ..decoding.constrain import release

    try:
        release(engine)  # first: llama.cpp's llguidance tokenizer points into the engine's vocabulary
    finally:
        engine.close()
