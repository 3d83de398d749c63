"""Many extractions in one call: ``Model.extract_many`` and ``Model.extract_iter``.

Every item gets what ``extract`` gives (validation, retries, confidence, usage, escalation when
configured); an item that fails (a text longer than the context, no valid output) is an
:class:`~edgeslm.EdgeSLMError` in its slot, so one bad document never loses the batch.

**Batched decoding.** When the engine can hold several sequences in one context
(:meth:`~edgeslm.backends.base.Backend.fork`: llama.cpp), up to ``batch_size`` items decode
together: each item runs the ordinary ``extract`` path (its own grammar matcher, forced tokens,
retries, validation) in a worker thread, on a model bound to one sequence of a shared context,
driven by the batch scheduler of the decoding layer (:mod:`edgeslm.decoding.scheduler`); the size is
the runtime's choice (:mod:`edgeslm.runtime.batching`). The schema is prepared once per call. The
context is opened for the call and freed after it.

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

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .._errors import EdgeSLMError, InvalidRequestError, ModelClosedError
from ..decoding.scheduler import BatchRun, SequenceView
from ..runtime.batching import (
    MIN_PREDICTED_GAIN,
    MIN_PROBE_GAIN,
    auto_plan,
    can_fork,
    chosen_batch_size,
    open_fork,
    predicted_gain,
    probe_pays,
)
from .results import Extraction

__all__ = ["MEASURE_ITEMS", "ExtractRun", "extract_iter"]

Result = Extraction | EdgeSLMError

#: Items ``extract_iter(batch_size=None)`` runs one at a time before it decides (the last is measured).
MEASURE_ITEMS = 2


def _texts(texts: Iterable[Any]) -> Iterable[Any]:
    if isinstance(texts, (str, bytes)):
        raise InvalidRequestError("texts must be a list (or iterable) of strings, not one string",
                                  hint="pass [text] for a single document, or use extract()")
    return texts


def extract_iter(
    model: Any, texts: Iterable[Any], schema: Any, *, progress: bool = False, total: int | None = None,
    batch_size: int | None = None, **extract_kwargs: Any,
) -> Iterator[tuple[int, Result]]:
    """Yield ``(index, Extraction or EdgeSLMError)`` for each of *texts* as it finishes."""
    from ._validate import check_int
    from .extract import prepare_schema

    plan = prepare_schema(schema)  # once per call; a schema that cannot be served fails it before any work
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
        if batch_size is None and can_fork(engine) and (total is None or total > MEASURE_ITEMS + 1):
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
                last = _extract_one(model, i, text, plan, extract_kwargs)
                one_s = time.perf_counter() - t_item
                if bar is not None:
                    bar.advance(last)
                yield i, last
            left = None if total is None else total - MEASURE_ITEMS
            size, gain, step_one = 1, 1.0, 0.0
            with model._gen.holding() as engine:
                if isinstance(last, Extraction) and probe_pays(last.usage, left, model.n_ctx, engine):
                    size, gain, step_one = auto_plan(engine, model.n_ctx, left)
            if size > 1 and gain >= MIN_PROBE_GAIN and predicted_gain(last.usage, step_one, gain) >= MIN_PREDICTED_GAIN:
                n = size
        run = _batched(model, pairs, plan, n, extract_kwargs, auto=batch_size is None, one_s=one_s) if n > 1 and \
            can_fork(engine) else _one_by_one(model, pairs, plan, extract_kwargs)
        for i, result in run:
            if bar is not None:
                bar.advance(result)
            yield i, result
    finally:
        if bar is not None:
            bar.close()


def _extract_one(model: Any, i: int, text: Any, plan: Any, kwargs: dict[str, Any]) -> Result:
    try:
        if not isinstance(text, str):
            raise InvalidRequestError(f"texts[{i}] is a {type(text).__name__}, not a string",
                                      hint="pass the documents as strings")
        return model._extract(text, plan, **kwargs)
    except ModelClosedError:
        raise
    except EdgeSLMError as exc:
        return exc


def _one_by_one(model: Any, pairs: Iterator[tuple[int, Any]], plan: Any,
                kwargs: dict[str, Any]) -> Iterator[tuple[int, Result]]:
    for i, text in pairs:
        yield i, _extract_one(model, i, text, plan, kwargs)


def _batched(model: Any, pairs: Iterator[tuple[int, Any]], plan: Any, n: int,
             kwargs: dict[str, Any], *, auto: bool, one_s: float | None = None) -> Iterator[tuple[int, Result]]:
    """Batched decoding of *pairs*; with *one_s* (seconds an item took one at a time, measured), the
    batch is checked once its first *n* items are done: slower than that, it takes no more items and
    the rest run one at a time."""
    run = ExtractRun(model, pairs, plan, kwargs)
    if not run.start(n, auto):  # not even 2 sequences fit: one at a time
        yield from _one_by_one(model, pairs, plan, kwargs)
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
        yield from _one_by_one(model, pairs, plan, kwargs)


class ExtractRun(BatchRun):
    """A batch of extractions: each worker is the model bound to one sequence
    (:meth:`Model._on_sequence <edgeslm.Model>`); it holds the model from :meth:`start` until it ends.
    :meth:`cancel` (``Model.close()`` from any thread, or another call on the model from the thread
    that started it) stops it within an engine round."""

    def __init__(self, model: Any, items: Iterable[tuple[int, Any]], plan: Any, kwargs: dict[str, Any]) -> None:
        super().__init__(items)
        self.model, self.plan, self.kwargs = model, plan, kwargs
        self.main = model._gen

    def start(self, n: int, auto: bool) -> bool:
        """Take the model, open the context and start the workers; ``False`` (model released) when not
        even 2 sequences fit."""
        from ..decoding.constrain import constraints

        engine = self.main.acquire()  # the model is held for the whole batch
        try:
            cache = constraints(engine)  # built once here, not raced by the workers
            _ = cache.tokenizer, cache.closing, cache.eog
            fork, n = open_fork(engine, n, self.model.n_ctx, auto)
        except BaseException:
            self.main.release()
            raise
        if fork is None:
            self.main.release()
            return False
        self.main.add_batch(self)
        self.run_on(fork, n, self.model.n_ctx)
        return True

    def make_worker(self, view: SequenceView) -> Any:
        return self.model._on_sequence(view)

    def do(self, worker: Any, i: int, item: Any) -> Any:
        return _extract_one(worker, i, item, self.plan, self.kwargs)

    def ended(self) -> None:
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
