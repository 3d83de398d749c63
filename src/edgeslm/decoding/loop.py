"""The token loop every backend shares.

``generate_steps`` is the bottom layer: prefill the prompt (reusing the KV cache prefix), then
choose one token at a time, masked by an optional constraint whose forced tokens are evaluated as
one batch. With a :class:`Drafter` (greedy decoding only), tokens it proposes (for extraction: the
text that follows, in the document, what was just written) are evaluated in the same engine call
and kept while each is the token the model would have chosen there. ``stream_text`` turns steps
into text deltas with stop strings and a finish reason. Both yield plain dataclasses, so the API
layer stays a thin wrapper.
"""

from __future__ import annotations

import codecs
import contextvars
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .._errors import ContextLengthError, GenerationCancelled, InvalidRequestError
from ..backends.base import Backend
from .sampling import Sampler, token_scores

__all__ = [
    "Constraint", "Drafter", "GenStats", "LogitsProcessor", "PromptLookup", "Step", "TextDelta", "common_prefix",
    "generate_steps", "partial_stop_len", "prefill",
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


class Drafter(Protocol):
    """Proposes the tokens likely to come next, given the bytes generated so far, and hears how
    many of them the model kept."""

    def propose(self, generated: bytes) -> list[int]: ...

    def observe(self, proposed: int, kept: int) -> None: ...


class PromptLookup:
    """Drafts from a source text (the document an extraction reads): where the last bytes written
    (at least *min_match*) occur in it, the tokens of the text that follows there. Extraction
    copies names, e-mails and numbers from the document, so the model often writes exactly those.

    A rejected token costs a row of the engine call, so the proposal length adapts: it doubles
    (up to *max_tokens*) after a proposal kept whole, and drops to what was kept after one that
    was not; once *patience* tokens have been proposed, drafting stops for the generation if fewer
    than *min_kept* of them were kept."""

    def __init__(self, source: bytes, tokenize: Callable[[str], list[int]], *, min_match: int = 3,
                 max_match: int = 32, max_tokens: int = 8, span: int = 64, patience: int = 16,
                 min_kept: float = 0.3) -> None:
        self.source, self.tokenize = source, tokenize
        self.min_match, self.max_match, self.max_tokens, self.span = min_match, max_match, max_tokens, span
        self.patience, self.min_kept = patience, min_kept
        self.length = 2
        self.proposed = self.kept = 0

    def propose(self, generated: bytes) -> list[int]:
        src = self.source
        if self.proposed >= self.patience and self.kept < self.min_kept * self.proposed:
            return []
        if len(generated) < self.min_match:
            return []
        n, at = self.min_match, src.rfind(generated[-self.min_match:])
        # the longest suffix found (a longer one is found only if this one is), and where it ends
        while at >= 0 and n < min(len(generated), self.max_match):
            longer = src.rfind(generated[-(n + 1):])
            if longer < 0:
                break
            n, at = n + 1, longer
        if at < 0:
            return []
        at += n
        text = src[at : at + self.span].decode("utf-8", errors="ignore")
        return self.tokenize(text)[: self.length] if text else []

    def observe(self, proposed: int, kept: int) -> None:
        self.proposed += proposed
        self.kept += kept
        self.length = min(self.max_tokens, 2 * self.length) if kept == proposed else max(1, kept)


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


_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("edgeslm_cancel", default=None)


@contextmanager
def cancel_on(event: threading.Event) -> Iterator[None]:
    """Calls made inside this block (in this thread or task) stop at their next token once *event*
    is set, raising :class:`~edgeslm.GenerationCancelled`; the model stays usable. Set *event* from
    any thread (a UI's cancel button, a server whose client left)::

        stop = threading.Event()
        with edgeslm.cancel_on(stop):
            x = model.extract(text, schema)   # another thread may call stop.set()
    """
    token = _CANCEL.set(event)
    try:
        yield
    finally:
        _CANCEL.reset(token)


def _check_cancel() -> None:
    event = _CANCEL.get()
    if event is not None and event.is_set():
        raise GenerationCancelled("the call was cancelled", hint="nothing to do: the app asked for it (cancel_on)")


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
    draft: Drafter | None = None,
) -> Iterator[Step]:
    """Yield generated tokens until end-of-generation, the grammar ends, or *max_tokens*.

    Each step: the backend's logits, masked by *constraint* (if any), then changed by each of
    *processors* in turn, then sampled; tokens the grammar forces after it are evaluated in one
    batch with it. With *draft*, greedy decoding on a backend that ``verifies`` and a constraint
    that can ``validate``: the drafter's proposal (cut where the grammar would refuse it) goes in
    that batch too, and each proposed token the model would have chosen is kept, which saves an
    engine call per kept token. The tokens are those greedy decoding chooses from the engine's
    logits; only the engine call a logit comes from differs, which can change a near-tie."""
    stats = stats if stats is not None else GenStats()
    _check_cancel()
    check_fits(backend, len(prompt))
    stats.prompt_tokens = len(prompt)
    stats.reused_tokens = prefill(backend, prompt)
    budget = min(max_tokens, backend.n_ctx - len(prompt))
    produced = 0
    out: list[int] = []  # the tokens generated so far, for processors
    validate = getattr(constraint, "validate", None)
    drafting = draft is not None and sampler.params.greedy and backend.verifies and validate is not None
    written = bytearray()  # the bytes generated so far, for the drafter
    if constraint is not None:  # tokens the grammar forces before the model chooses anything
        first = constraint.forced()[:budget]
        out.extend(first)
        if first:
            stats.first_token_at = time.perf_counter()
            produced = len(first)
            stats.completion_tokens = stats.forced_tokens = produced
            for f in first:
                piece = backend.token_bytes(f)
                written.extend(piece)
                yield Step(f, piece, None, True)
            if produced < budget and not constraint.done():
                backend.eval(first)

    def pick(logits: np.ndarray) -> tuple[int, float | None, bool, float | None]:
        """The token chosen from *logits* (masked, processed): token, logprob, forced, margin."""
        if constraint is not None or processors:
            logits = logits.copy()
        if constraint is not None:
            constraint.mask(logits)
        for proc in processors:
            proc(out, logits)
        tok = sampler.choose(logits)
        # a token that was the grammar's only option is forced, whatever the sampler did
        only = constraint is not None and constraint.n_allowed == 1
        if not logprobs or only:
            return tok, None, only, None
        lp, margin = token_scores(logits, tok)
        return tok, lp, only, margin

    def take(tok: int, lp: float | None, only: bool, margin: float | None) -> tuple[list[int], list[Step]]:
        """Advance past the chosen *tok*: the tokens to evaluate (it and those the grammar forces
        after it), and the steps to yield."""
        nonlocal produced
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
        steps = [Step(tok, backend.token_bytes(tok), lp, only, margin)]
        steps.extend(Step(f, backend.token_bytes(f), None, True) for f in forced)
        if drafting:
            for st in steps:
                written.extend(st.piece)
        return batch, steps

    def ended() -> bool:
        return produced >= budget or (constraint is not None and constraint.done())

    picked: tuple[int, float | None, bool, float | None] | None = None
    while produced < budget:
        _check_cancel()
        if constraint is not None and constraint.done():
            break
        choice = picked if picked is not None else pick(backend.logits())
        picked = None
        if stats.first_token_at is None:
            stats.first_token_at = time.perf_counter()
        if backend.is_eog(choice[0]) and (constraint is None or constraint.accepting()):
            break
        batch, steps = take(*choice)
        yield from steps
        if ended():
            break  # the cache need not hold the last tokens: prefill() compares what it holds
        proposal = _proposal(draft, bytes(written), validate, backend, budget - produced) if drafting else []
        if not proposal:
            backend.eval(batch)
            continue
        # one engine call: the tokens taken, then the proposal, with the logits after each of the
        # latter's predecessors; a proposed token is kept while it is what the model chooses there
        rows = backend.eval_rows([*batch, *proposal], len(proposal) + 1)
        base = keep = len(backend.tokens) - len(proposal)
        tail: list[int] = []
        for j, token in enumerate(proposal):
            choice = pick(rows[j])
            if choice[0] != token:
                picked = choice
                break
            taken, steps = take(*choice)
            keep += 1
            yield from steps
            if len(taken) > 1 or ended():  # forced tokens follow: evaluate them, then choose afresh
                tail = taken[1:]
                break
        else:
            picked = pick(rows[len(proposal)])
        if draft is not None:
            draft.observe(len(proposal), keep - base)
        if keep < len(backend.tokens):  # drop the rejected proposal from the cache
            backend.trim(keep)
        if ended():
            break
        if tail:
            backend.eval(tail)
    stats.finished_at = time.perf_counter()
    stats.hit_limit = produced >= budget


def _proposal(draft: Drafter | None, written: bytes, validate: Callable[[list[int]], int], backend: Backend,
              room: int) -> list[int]:
    """The drafter's tokens, cut where the grammar would refuse them and to the *room* left."""
    if draft is None or room < 1:
        return []
    got = draft.propose(written)[:room]
    for i, t in enumerate(got):
        if backend.is_eog(t):
            got = got[:i]
            break
    return got[: validate(got)] if got else []


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
