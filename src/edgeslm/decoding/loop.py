"""The token loop every backend shares.

``generate_steps`` is the bottom layer: prefill the prompt (reusing the KV cache prefix), then
choose one token at a time, masked by an optional constraint whose forced tokens are evaluated as
one batch. ``stream_text`` turns steps into text deltas with stop strings and a finish reason.
Both yield plain dataclasses, so the API layer stays a thin wrapper.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .._errors import ContextLengthError, InvalidRequestError
from ..backends.base import Backend
from .sampling import Sampler, token_logprob, token_margin

__all__ = [
    "Constraint", "GenStats", "LogitsProcessor", "Step", "TextDelta", "common_prefix", "generate_steps",
    "partial_stop_len", "prefill",
    "stream_text",
]


class Constraint(Protocol):
    """What the loop needs from a grammar (see :mod:`edgeslm.decoding.constrain`)."""

    n_allowed: int | None
    """How many tokens the last :meth:`mask` allowed (``None``: not counted). A token that was the
    only one allowed counts as forced: it carries no log-probability."""

    def mask(self, logits: np.ndarray) -> None:
        """Set logits of forbidden tokens to ``-inf`` in place."""

    def consume(self, token: int) -> None:
        """Advance the grammar by one token."""

    def forced(self) -> list[int]:
        """Tokens the grammar now forces (already consumed by the grammar)."""

    def done(self) -> bool:
        """Whether the grammar has finished (no further token is allowed)."""

    def accepting(self) -> bool:
        """Whether the output so far is complete and could end here."""


class LogitsProcessor(Protocol):
    """A step of the loop after the constraint's mask and before sampling: changes *logits* in
    place, given the tokens generated so far (forced ones included). Processors compose: the
    loop calls each in turn, as mlx-lm's ``logits_processors``."""

    def __call__(self, tokens: Sequence[int], logits: np.ndarray) -> None: ...


@dataclass
class Step:
    """One generated token."""

    token: int
    piece: bytes
    logprob: float | None
    forced: bool
    margin: float | None = None
    """With ``logprobs``: probability of the top token minus the second's, where the model chose."""


@dataclass
class GenStats:
    """Timing and counts of one generation, filled while it runs."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    completion_tokens: int = 0
    forced_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    hit_limit: bool = False

    @property
    def ttft_s(self) -> float:
        """Seconds from the call to the first generated token."""
        return (self.first_token_at or time.perf_counter()) - self.started

    @property
    def decode_tokens_per_s(self) -> float:
        """Completion tokens after the first, per second of decoding."""
        if self.first_token_at is None or self.completion_tokens < 2:
            return 0.0
        dt = (self.finished_at or time.perf_counter()) - self.first_token_at
        return (self.completion_tokens - 1) / dt if dt > 0 else 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens *a* and *b* share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefill(backend: Backend, tokens: Sequence[int]) -> int:
    """Make the KV cache hold exactly *tokens*, reusing its common prefix; return tokens reused."""
    cached = backend.tokens
    n = max(0, min(common_prefix(cached, tokens), len(tokens) - 1))  # evaluate >= 1 token: fresh logits
    if n > 0 and len(tokens) - n == 2:
        n -= 1  # no lone prompt token before the last one (see below): batch it with its predecessor
    if n < len(cached):
        backend.trim(n)
    # The last prompt token is always evaluated on its own: engines round differently for a
    # batch of one than for a longer batch, and this keeps the first logits identical whether or
    # not the prefix came from the cache (greedy decoding stays reproducible across calls). For the
    # same reason every other prompt token goes in a batch of two or more, as on a fresh cache.
    if len(tokens) - n > 1:
        backend.eval(tokens[n:-1])
    backend.eval(tokens[-1:])
    return n


def check_fits(backend: Backend, n_prompt: int) -> None:
    """Raise :class:`ContextLengthError` when a prompt leaves no room to generate, and
    :class:`InvalidRequestError` for an empty one (there would be no logits to start from)."""
    if n_prompt == 0:
        raise InvalidRequestError(
            "the prompt is empty (no tokens, and this model adds no BOS token)",
            hint="pass some text to continue from",
        )
    if n_prompt >= backend.n_ctx:
        raise ContextLengthError(
            f"the prompt is {n_prompt} tokens but the context window is {backend.n_ctx} tokens",
            n_prompt=n_prompt,
            n_ctx=backend.n_ctx,
            hint="shorten the input, or load the model with a larger n_ctx= (up to the model's "
            "trained context length)",
        )


def generate_steps(
    backend: Backend,
    prompt: Sequence[int],
    sampler: Sampler,
    max_tokens: int,
    *,
    constraint: Constraint | None = None,
    processors: Sequence[LogitsProcessor] = (),
    logprobs: bool = False,
    stats: GenStats | None = None,
) -> Iterator[Step]:
    """Yield generated tokens until end-of-generation, the grammar ends, or *max_tokens*.

    Each step: the backend's logits, masked by *constraint* (if any), then changed by each of
    *processors* in turn, then sampled; tokens the grammar forces after it are evaluated in one
    batch with it."""
    stats = stats if stats is not None else GenStats()
    check_fits(backend, len(prompt))
    stats.prompt_tokens = len(prompt)
    stats.reused_tokens = prefill(backend, prompt)
    budget = min(max_tokens, backend.n_ctx - len(prompt))
    produced = 0
    out: list[int] = []  # the tokens generated so far, for processors
    if constraint is not None:  # tokens the grammar forces before the model chooses anything
        first = constraint.forced()[:budget]
        out.extend(first)
        if first:
            stats.first_token_at = time.perf_counter()
            produced = len(first)
            stats.completion_tokens = stats.forced_tokens = produced
            for f in first:
                yield Step(f, backend.token_bytes(f), None, True)
            if produced < budget and not constraint.done():
                backend.eval(first)
    while produced < budget:
        if constraint is not None and constraint.done():
            break
        logits = backend.logits()
        if constraint is not None or processors:
            logits = logits.copy()
        if constraint is not None:
            constraint.mask(logits)
        for proc in processors:
            proc(out, logits)
        tok = sampler.choose(logits)
        # a token that was the grammar's only option is forced, whatever the sampler did
        only = constraint is not None and constraint.n_allowed == 1
        lp = token_logprob(logits, tok) if logprobs and not only else None
        margin = token_margin(logits) if lp is not None else None
        if stats.first_token_at is None:
            stats.first_token_at = time.perf_counter()
        if backend.is_eog(tok) and (constraint is None or constraint.accepting()):
            break
        batch = [tok]
        forced: list[int] = []
        if constraint is not None:
            constraint.consume(tok)
            forced = constraint.forced()[: max(0, budget - produced - 1)]
            batch.extend(forced)
        produced += len(batch)
        out.extend(batch)
        stats.completion_tokens = produced
        stats.forced_tokens += len(forced) + only
        yield Step(tok, backend.token_bytes(tok), lp, only, margin)
        for f in forced:
            yield Step(f, backend.token_bytes(f), None, True)
        if produced >= budget or (constraint is not None and constraint.done()):
            break  # the cache need not hold the last tokens: prefill() compares what it holds
        backend.eval(batch)
    stats.finished_at = time.perf_counter()
    stats.hit_limit = produced >= budget


@dataclass
class TextDelta:
    """A piece of generated text; ``finish_reason`` is set on the last one."""

    text: str
    finish_reason: str | None = None


def stream_text(
    steps: Iterator[Step],
    stop: Sequence[str] = (),
    stats: GenStats | None = None,
) -> Iterator[TextDelta]:
    """Decode *steps* into text, cutting at the first stop string.

    Text that might be the start of a stop string is held back until it is clear it is not.
    ``finish_reason`` is ``"stop"`` (end of generation or stop string) or ``"length"``.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = [s for s in stop if s]
    pending = ""
    for step in steps:
        pending += decoder.decode(step.piece)
        if not pending:
            continue
        if not stops:
            yield TextDelta(pending)
            pending = ""
            continue
        cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            if cut:
                yield TextDelta(pending[:cut])
            close = getattr(steps, "close", None)
            if close is not None:
                close()
            yield TextDelta("", "stop")
            return
        keep = partial_stop_len(pending, stops)
        if len(pending) > keep:
            yield TextDelta(pending[: len(pending) - keep])
            pending = pending[len(pending) - keep :]
    pending += decoder.decode(b"", final=True)
    if pending:
        yield TextDelta(pending)
    yield TextDelta("", "length" if stats is not None and stats.hit_limit else "stop")


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of *text* that is the start of one of *stops* (text to hold back)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
