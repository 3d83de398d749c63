"""Grammar constraint for the decoding loop: an llguidance matcher behind the ``Constraint`` protocol.

Build the grammar with :func:`edgeslm.decoding.schema.grammar_for`; build the tokenizer once per model
(``llguidance.llamacpp.lltokenizer_from_vocab`` takes about 0.2-1 s) and share it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .._errors import GenerationError, SchemaError

if TYPE_CHECKING:
    import llguidance

__all__ = ["GrammarConstraint", "accepts"]


def _matcher(
    tokenizer: llguidance.LLTokenizer, grammar: str, limits: llguidance.LLParserLimits | None = None
) -> llguidance.LLMatcher:
    from llguidance import LLMatcher

    key = (id(tokenizer), grammar)
    proto = _PROTOS.get(key) if limits is None else None
    if proto is None:
        proto = LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        if proto.is_error():
            raise SchemaError(
                f"the grammar does not compile: {proto.get_error()}",
                hint="build grammars with edgeslm.decoding.schema.grammar_for(), which checks the schema first",
            )
        if limits is None:
            with _CACHE_LOCK:  # models on other threads share the cache
                if len(_PROTOS) >= 256:
                    _PROTOS.pop(next(iter(_PROTOS)), None)
                _PROTOS[key] = proto
                _TOKENIZERS[id(tokenizer)] = tokenizer  # keep it alive: its id is part of the key
    return proto.deep_copy()


# Compiled matchers in their start state, per (tokenizer, grammar): each use gets a deep copy,
# so repeated extractions with one schema compile it once.
_PROTOS: dict[tuple[int, str], llguidance.LLMatcher] = {}
_TOKENIZERS: dict[int, llguidance.LLTokenizer] = {}
_CACHE_LOCK = threading.Lock()


def forget_tokenizer(tokenizer: llguidance.LLTokenizer | None) -> None:
    """Drop every cached matcher of *tokenizer* (its model was closed), so its memory can be freed."""
    if tokenizer is None:
        return
    with _CACHE_LOCK:
        for key in [k for k in _PROTOS if k[0] == id(tokenizer)]:
            del _PROTOS[key]
        _TOKENIZERS.pop(id(tokenizer), None)


def _forget(tokenizer: llguidance.LLTokenizer, grammar: str) -> None:
    """Drop a grammar's cached matcher after one of its copies failed.

    Deep copies share the lexer's state cache, so a copy that exhausted the lexer budget leaves
    the prototype unusable (every later copy fails at its first token); the next use recompiles."""
    with _CACHE_LOCK:
        _PROTOS.pop((id(tokenizer), grammar), None)


def _hint(m: llguidance.LLMatcher, default: str) -> str:
    if m.stop_reason() == "ParserTooComplex":
        return (
            "the schema is too complex for the grammar engine's per-token budget (e.g. a long "
            "maxLength combined with a complex pattern): relax the schema, or pass larger "
            "llguidance.LLParserLimits(step_lexer_fuel=...)"
        )
    return default


class GrammarConstraint:
    """Masks logits to the tokens an llguidance grammar allows, and tracks what was generated."""

    def __init__(
        self,
        tokenizer: llguidance.LLTokenizer,
        grammar: str,
        *,
        limits: llguidance.LLParserLimits | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.matcher = _matcher(tokenizer, grammar, limits)
        self.vocab_size = int(tokenizer.vocab_size)
        n_words = (self.vocab_size + 31) // 32
        self._bitmask = np.zeros((1, n_words), dtype=np.int32)
        self._bytes = self._bitmask.view(np.uint8).reshape(-1)
        self.n_allowed = self.vocab_size  # tokens the last mask() allowed

    def mask(self, logits: np.ndarray) -> None:
        """Set the logits of tokens the grammar forbids to ``-inf``, in place.

        Entries past the tokenizer's vocabulary (padded logits) are forbidden; a shorter logits vector
        is masked over the tokens it has."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self._bitmask)
        if self.matcher.is_error():
            _forget(self.tokenizer, self.grammar)
            raise GenerationError(
                f"the grammar failed while computing the next-token mask: {self.matcher.get_error()}",
                hint=_hint(self.matcher, "this is a bug in the grammar engine; report it with the schema"),
            )
        n = min(int(logits.shape[-1]), self.vocab_size)
        allowed = np.unpackbits(self._bytes, count=n, bitorder="little").view(bool)
        self.n_allowed = int(np.count_nonzero(allowed))
        np.copyto(logits[..., :n], -np.inf, where=~allowed)
        if logits.shape[-1] > n:
            logits[..., n:] = -np.inf

    def consume(self, token: int) -> None:
        """Advance the grammar by *token*; raise :class:`GenerationError` if it is not allowed."""
        if not self.matcher.consume_token(int(token)):
            _forget(self.tokenizer, self.grammar)
            raise GenerationError(
                f"token {token} is not allowed by the grammar: {self.matcher.get_error()}",
                hint=_hint(self.matcher, "choose tokens only among those mask() leaves finite"),
            )

    def forced(self) -> list[int]:
        """Tokens the grammar forces next; they are consumed here, the caller only evaluates them."""
        if self.matcher.is_stopped():
            return []
        toks = list(self.matcher.compute_ff_tokens())
        if toks and not self.matcher.consume_tokens(toks):
            _forget(self.tokenizer, self.grammar)
            raise GenerationError(
                f"the grammar rejected its own forced tokens: {self.matcher.get_error()}",
                hint="this is a bug in the grammar engine; report it with the schema",
            )
        return toks

    def done(self) -> bool:
        """Whether no further token (other than end-of-sequence) is allowed."""
        return bool(self.matcher.is_stopped())

    def accepting(self) -> bool:
        """Whether the output so far is complete."""
        return bool(self.matcher.is_accepting())

    def reset(self) -> None:
        """Start over, for a retry."""
        self.matcher.reset()


def accepts(
    tokenizer: llguidance.LLTokenizer,
    grammar: str,
    tokens: list[int],
    *,
    limits: llguidance.LLParserLimits | None = None,
) -> tuple[bool, str]:
    """Feed *tokens* to a fresh matcher: ``(True, "")`` when all are allowed and the result is complete."""
    m = _matcher(tokenizer, grammar, limits)
    if not m.consume_tokens([int(t) for t in tokens]):
        _forget(tokenizer, grammar)
        return False, m.get_error() or "token rejected"
    if not m.is_accepting():
        return False, "incomplete: the grammar expects more"
    return True, ""


_CLOSERS = frozenset(b"]}")

#: A JSON number longer than this is a runaway: no float64 needs more characters than
#: ``-1.2345678901234567e-308`` (24). Past it, tokens that end the number are boosted.
MAX_NUMBER_CHARS = 24


class ClosingTokens(NamedTuple):
    """Token ids that help finish JSON (see :func:`closing_tokens`)."""

    quotes: np.ndarray
    closers: np.ndarray
    enders: np.ndarray


def closing_tokens(backend: object) -> ClosingTokens:
    """Token ids that help finish JSON, cached on the backend:

    * *quotes* start with ``"`` followed only by closers/spaces (end a string, maybe more);
    * *closers* are made only of ``]`` / ``}`` (and spaces), plus end-of-generation tokens;
    * *enders* end a value where the text continues: they start with ``,``, ``]`` or ``}``, plus
      end-of-generation tokens.

    Used to wrap up a generation that runs away: biasing them makes the grammar-valid output end
    as soon as the schema allows.
    """
    cached = getattr(backend, "_closing_tokens", None)
    if cached is None:
        quotes, closers, enders = [], [], []
        for t in range(backend.n_vocab):  # type: ignore[attr-defined]
            if backend.is_eog(t):  # type: ignore[attr-defined]
                closers.append(t)
                enders.append(t)
                continue
            b = backend.token_bytes(t).strip()  # type: ignore[attr-defined]
            if not b:
                continue
            if b[0] in b",]}":
                enders.append(t)
            if b[0:1] == b'"' and all(c in _CLOSERS or c == 44 for c in b[1:]) and b.count(b",") == 0:
                quotes.append(t)
            elif all(c in _CLOSERS for c in b):
                closers.append(t)
        cached = ClosingTokens(*(np.asarray(x, dtype=np.int64) for x in (quotes, closers, enders)))
        backend._closing_tokens = cached  # type: ignore[attr-defined]
    return cached


class JsonScan:
    """Tracks emitted JSON text byte by byte: inside a string (with escapes), and the length of the
    number being written, if any."""

    def __init__(self) -> None:
        self.in_string = False
        self._escape = False
        self.number_len = 0

    def feed(self, data: bytes) -> None:
        for c in data:
            if self.in_string:
                if self._escape:
                    self._escape = False
                elif c == 0x5C:  # backslash
                    self._escape = True
                elif c == 0x22:
                    self.in_string = False
            elif c == 0x22:
                self.in_string = True
                self.number_len = 0
            elif c in _NUMBER_BYTES:
                self.number_len += 1
            else:
                self.number_len = 0


_NUMBER_BYTES = frozenset(b"0123456789.eE+-")


def repeating(tokens: Sequence[int], window: int = 48, max_period: int = 24) -> bool:
    """True when the last *window* tokens are one short cycle repeated (a runaway loop)."""
    if len(tokens) < window:
        return False
    tail = list(tokens[-window:])
    return any(tail[p:] == tail[:-p] for p in range(1, max_period + 1))


class WrapUp:
    """A constraint wrapper that steers a runaway generation to close its JSON quickly.

    Once switched on (``on``), it boosts, inside a string, tokens that end the string; outside,
    tokens that close arrays and objects or end generation. Independently, a number longer than
    :data:`MAX_NUMBER_CHARS` gets the tokens that end it boosted (``steered`` records that this
    happened). Only allowed tokens are boosted (``-inf`` stays ``-inf``), so the output stays
    exactly as valid as the grammar makes it. Subclasses change :meth:`mask` and call
    :meth:`boost` after their own masking.
    """

    #: Longest cycle, in tokens, that :meth:`watch` takes for a runaway loop.
    max_period = 24

    def __init__(self, inner: GrammarConstraint, tokens: ClosingTokens, bias: float = 40.0) -> None:
        self.inner = inner
        self.quotes, self.closers, self.enders = tokens
        self.bias = bias
        self.on = False
        self.steered = False
        self.scan = JsonScan()

    def mask(self, logits: np.ndarray) -> None:
        self.inner.mask(logits)
        self.boost(logits)

    def watch(self, tokens: Sequence[int], soft_limit: int) -> None:
        """Switch on once *tokens* (the output so far) reach *soft_limit*, or end in a repeated
        cycle of up to :attr:`max_period` tokens (checked every 8 tokens)."""
        if not self.on and (
            len(tokens) >= soft_limit or (len(tokens) % 8 == 0 and repeating(tokens, max_period=self.max_period))
        ):
            self.on = True

    def boost(self, logits: np.ndarray) -> None:
        """Raise the allowed tokens that end the current string or the JSON (once ``on``), or
        the current number (once it is too long)."""
        if self.on:
            ids = self.quotes if self.scan.in_string else self.closers
            if ids.size:
                logits[ids] += self.bias
        elif self.scan.number_len >= MAX_NUMBER_CHARS and self.enders.size:
            sub = logits[self.enders]
            if np.isfinite(sub).any():  # the grammar lets the number end here
                logits[self.enders] = sub + self.bias
                self.steered = True

    @property
    def n_allowed(self) -> int:
        return self.inner.n_allowed

    def consume(self, token: int) -> None:
        self.inner.consume(token)

    def forced(self) -> list[int]:
        return self.inner.forced()

    def done(self) -> bool:
        return self.inner.done()

    def accepting(self) -> bool:
        return self.inner.accepting()
