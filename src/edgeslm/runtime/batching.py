"""How many sequences a batch decodes at once, measured on this engine, and whether they fit.

The policy beside the batch scheduler (:mod:`edgeslm.decoding.scheduler`, the mechanism):
memory first (:func:`auto_batch_size`: the KV caches of every sequence in a share of the available
memory, the GPU's where the model's layers are), then speed, measured rather than assumed
(:func:`decode_gain`: one decode step of N sequences against one of one, on a small context forked
for it, kept per model; :func:`best_batch_size` doubles N while that pays). Whole extractions gain
less than a decode step (prompt work does not shrink, rounds wait for the slowest sequence): see
:func:`predicted_gain` and :func:`probe_pays`, which ``extract_many(batch_size=None)`` uses after
measuring its first items one at a time, and :func:`chosen_batch_size`, which the server uses for
requests it cannot measure first. :func:`open_fork` opens the context, halving an automatic size
that does not fit.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .._errors import BackendUnavailableError, InsufficientMemoryError
from ..backends.base import Backend

__all__ = ["BATCH_EFFICIENCY", "MAX_AUTO_BATCH", "MAX_SEQUENCES", "MIN_DECODE_GAIN", "MIN_PREDICTED_GAIN",
           "MIN_PROBE_GAIN", "auto_batch_size", "auto_plan", "batch_cap", "best_batch_size", "can_fork",
           "chosen_batch_size", "decode_gain", "decode_step_seconds", "kv_memory", "open_fork", "planned_bytes",
           "predicted_gain", "probe_pays", "probe_sizes"]

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


def can_fork(engine: Backend) -> bool:
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
    if not can_fork(engine):
        return 1
    if available_bytes is None:
        available_bytes = _available(engine)
    per_seq = engine.kv_bytes_per_token() * n_ctx
    if per_seq <= 0:
        return min(4, MAX_AUTO_BATCH)
    room = available_bytes * KV_MEMORY_SHARE - planned_bytes(engine, 0, n_ctx)
    return max(1, min(MAX_AUTO_BATCH, int(room // per_seq)))


def _available(engine: Backend) -> int:
    from . import hardware

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
    for size in probe_sizes(cap):
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


def probe_pays(usage: Any, left: int | None, n_ctx: int, engine: Backend) -> bool:
    """Whether probing the engine's batched decode rate can pay for itself on the *left* items
    (``None``: an open-ended stream, which it can): at best a step of N sequences would give N
    times the tokens/s (:func:`predicted_gain` with that gain and the measured item's timings); what
    that saves on the items left must be at least :data:`PROBE_PAYBACK` times the probe's cost,
    estimated from the measured item (per probed size: 6 evaluated tokens per sequence at its
    prompt rate and 8 steps at its decode rate), or nothing where the probe's figures are kept."""
    if left is None:
        return True
    cap = batch_cap(engine, n_ctx, left)
    sizes = probe_sizes(cap)
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


def probe_sizes(cap: int) -> list[int]:
    """The sizes :func:`best_batch_size` tries under *cap*, in order: 8 (or *cap*), doubled, capped."""
    out, n = [], min(8, cap)
    while n > 1:
        out.append(n)
        if n >= cap:
            break
        n = min(2 * n, cap)
    return out


def auto_plan(engine: Backend, n_ctx: int, total: int | None) -> tuple[int, float, float]:
    """``(size, decode gain, seconds of a one-sequence step)`` the probe finds for ``batch_size=None``
    on an engine that can fork."""
    n, gain = best_batch_size(engine, batch_cap(engine, n_ctx, total))
    return n, gain, (decode_step_seconds(engine, n)[0] if n > 1 else 0.0)


def open_fork(engine: Backend, n: int, n_ctx: int, auto: bool) -> tuple[Backend | None, int]:
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
