"""Grammar constraints for the decoding loop, and the per-model state they need.

* :class:`GrammarConstraint`: an llguidance matcher behind the loop's ``Constraint`` protocol.
* :class:`ConstraintCache` (:func:`constraints`, :func:`release`): per model, the llguidance
  tokenizer, compiled grammars and token sets, owned here and freed with the model.
* :class:`JsonWrapUp`: a logits processor that steers a runaway JSON generation to close (composed
  with a constraint by the loop, see :func:`edgeslm.decoding.loop.generate_steps`).

Build grammars with :func:`edgeslm.decoding.schema.grammar_for`.

Over ~450 lines on purpose: the grammar constraint and the per-model state it needs (llguidance
tokenizer, closing-token sets) are one unit, and the wrap-up processor steers the same matcher.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .._errors import GenerationError, SchemaError
from ..backends.base import Backend

if TYPE_CHECKING:
    import llguidance

__all__ = [
    "ConstraintCache", "GrammarConstraint", "JsonWrapUp", "accepts", "closing_tokens", "constraints", "live_caches",
    "release",
]


class ConstraintCache:
    """What constrained decoding keeps for one model: the llguidance tokenizer (built once; 0.2-1 s
    for a 50k vocabulary), compiled matchers per grammar in their start state (each use gets a deep
    copy, so repeated extractions with one schema compile it once; the oldest of more than
    :attr:`max_matchers` are dropped), and the token sets that steer JSON to a close.

    Get it with :func:`constraints`; it is freed by :func:`release` (``Model.close`` calls it) or
    when its backend is garbage-collected."""

    max_matchers = 256

    def __init__(self, build_tokenizer: Any, *, token_bytes: Any = None, n_vocab: int = 0, is_eog: Any = None,
                 eog_tokens: Any = None, vocab_pieces: Any = None) -> None:
        self._build = build_tokenizer
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._protos: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._token_bytes = token_bytes
        self._n_vocab = n_vocab
        self._is_eog = is_eog
        self._eog_tokens = eog_tokens
        self._vocab_pieces = vocab_pieces
        self._closing: ClosingTokens | None = None
        self._eog: np.ndarray | None = None

    @classmethod
    def for_tokenizer(cls, tokenizer: llguidance.LLTokenizer) -> ConstraintCache:
        """A cache around a tokenizer built elsewhere (tools and tests that hold no backend)."""
        return cls(lambda: tokenizer)

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = self._build()
        assert self._tokenizer is not None
        return self._tokenizer

    def __len__(self) -> int:
        """How many compiled grammars are kept."""
        return len(self._protos)

    def matcher(self, grammar: str, limits: llguidance.LLParserLimits | None = None) -> llguidance.LLMatcher:
        """A fresh matcher for *grammar* (a copy of the cached compiled one; *limits* bypass the cache)."""
        from llguidance import LLMatcher

        tok = self.tokenizer
        proto = self._protos.get(grammar) if limits is None else None
        if proto is None:
            proto = LLMatcher(tok, grammar, log_level=0, limits=limits)
            if proto.is_error():
                raise SchemaError(
                    f"the grammar does not compile: {proto.get_error()}",
                    hint="build grammars with edgeslm.decoding.schema.grammar_for(), which checks the schema first",
                )
            if limits is None:
                with self._lock:
                    while len(self._protos) >= self.max_matchers:
                        self._protos.popitem(last=False)
                    self._protos[grammar] = proto
        else:
            with self._lock:
                if grammar in self._protos:
                    self._protos.move_to_end(grammar)
        return proto.deep_copy()

    def forget(self, grammar: str) -> None:
        """Drop a grammar's compiled matcher after one of its copies failed.

        Deep copies share the lexer's state cache, so a copy that exhausted the lexer budget leaves
        the prototype unusable (every later copy fails at its first token); the next use recompiles."""
        with self._lock:
            self._protos.pop(grammar, None)

    @property
    def closing(self) -> ClosingTokens:
        """Token ids that help finish JSON (see :func:`closing_tokens`)."""
        if self._closing is None:
            if self._vocab_pieces is not None:  # the whole vocabulary at once (cached on disk): ~0.1 s, not 1.7
                self._closing = _scan_pieces(self._vocab_pieces(), set(self.eog.tolist()))
            else:
                self._closing = _scan_closing(self._n_vocab, self._token_bytes, self._is_eog)
        return self._closing

    @property
    def eog(self) -> np.ndarray:
        """Every end-of-generation token id of the vocabulary."""
        if self._eog is None:
            ids = self._eog_tokens() if self._eog_tokens is not None else \
                [t for t in range(self._n_vocab) if self._is_eog(t)]
            self._eog = np.asarray(ids, dtype=np.int64)
        return self._eog

    def clear(self) -> None:
        """Drop the tokenizer and every compiled grammar."""
        with self._lock:
            self._protos.clear()
            self._tokenizer = None


_CACHES: weakref.WeakKeyDictionary[Any, ConstraintCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def constraints(backend: Backend) -> ConstraintCache:
    """The :class:`ConstraintCache` of *backend* (made on first use, kept while the backend lives);
    backends sharing one vocabulary (:attr:`~edgeslm.backends.base.Backend.vocab_owner`) share it."""
    backend = backend.vocab_owner
    cache = _CACHES.get(backend)
    if cache is None:
        with _CACHES_LOCK:
            cache = _CACHES.get(backend)
            if cache is None:
                ref = weakref.ref(backend)  # the cache must not keep its backend alive

                def call(name: str) -> Callable[..., Any]:
                    return lambda *a: getattr(_alive(ref), name)(*a)

                cache = ConstraintCache(call("constraint_tokenizer"), token_bytes=call("token_bytes"),
                                        n_vocab=backend.n_vocab, is_eog=call("is_eog"),
                                        eog_tokens=call("eog_tokens"),
                                        vocab_pieces=call("vocab_pieces") if hasattr(backend, "vocab_pieces") else None)
                _CACHES[backend] = cache
    return cache


def _alive(ref: weakref.ref[Backend]) -> Backend:
    b = ref()
    if b is None:  # pragma: no cover - the cache goes with its backend
        raise GenerationError("the model was closed", hint="load it again with edgeslm.load()")
    return b


def release(backend: Backend) -> None:
    """Free what constrained decoding kept for *backend* (call before closing it: llama.cpp's
    llguidance tokenizer points into the engine's vocabulary). A backend that uses another's
    vocabulary (a fork, a view) releases nothing: its owner's state stays."""
    if backend.vocab_owner is not backend:
        return
    with _CACHES_LOCK:
        cache = _CACHES.pop(backend, None)
    if cache is not None:
        cache.clear()


def live_caches() -> int:
    """How many models have constraint state alive (for tests and leak checks)."""
    return len(_CACHES)


def _as_cache(source: Any) -> ConstraintCache:
    if isinstance(source, ConstraintCache):
        return source
    if isinstance(source, Backend):
        return constraints(source)
    return ConstraintCache.for_tokenizer(source)  # an llguidance.LLTokenizer


def _hint(m: llguidance.LLMatcher, default: str) -> str:
    if m.stop_reason() == "ParserTooComplex":
        return (
            "the schema is too complex for the grammar engine's per-token budget (e.g. a long "
            "maxLength combined with a complex pattern): relax the schema, or pass larger "
            "llguidance.LLParserLimits(step_lexer_fuel=...)"
        )
    return default


class GrammarConstraint:
    """Masks logits to the tokens an llguidance grammar allows.

    *source* is a backend (its :class:`ConstraintCache` is used), a :class:`ConstraintCache`, or an
    ``llguidance.LLTokenizer``. *also_end*: token ids allowed wherever the grammar could end (a
    model's end-of-turn tokens besides the one EOS llguidance knows); choosing one ends generation.
    """

    def __init__(
        self,
        source: Any,
        grammar: str,
        *,
        limits: llguidance.LLParserLimits | None = None,
        also_end: np.ndarray | None = None,
    ) -> None:
        self.cache = _as_cache(source)
        self.tokenizer = self.cache.tokenizer
        self.grammar = grammar
        self.matcher = self.cache.matcher(grammar, limits)
        self.vocab_size = int(self.tokenizer.vocab_size)
        self.also_end = also_end if also_end is not None and also_end.size else None
        n_words = (self.vocab_size + 31) // 32
        self._bitmask = np.zeros((1, n_words), dtype=np.int32)
        self._bytes = self._bitmask.view(np.uint8).reshape(-1)
        self.n_allowed: int | None = self.vocab_size  # tokens the last mask() allowed

    def mask(self, logits: np.ndarray) -> None:
        """Set the logits of tokens the grammar forbids to ``-inf``, in place.

        Entries past the tokenizer's vocabulary (padded logits) are forbidden; a shorter logits vector
        is masked over the tokens it has."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self._bitmask)
        if self.matcher.is_error():
            self.cache.forget(self.grammar)
            raise GenerationError(
                f"the grammar failed while computing the next-token mask: {self.matcher.get_error()}",
                hint=_hint(self.matcher, "this is a bug in the grammar engine; report it with the schema"),
            )
        n = min(int(logits.shape[-1]), self.vocab_size)
        allowed = np.unpackbits(self._bytes, count=n, bitorder="little").view(bool)
        if self.also_end is not None and self.matcher.is_accepting():
            allowed = allowed.copy()
            allowed[self.also_end[self.also_end < n]] = True
        self.n_allowed = int(np.count_nonzero(allowed))
        np.copyto(logits[..., :n], -np.inf, where=~allowed)
        if logits.shape[-1] > n:
            logits[..., n:] = -np.inf

    def consume(self, token: int) -> None:
        """Advance the grammar by *token*; raise :class:`GenerationError` if it is not allowed."""
        if self.also_end is not None and int(token) in self.also_end and self.matcher.is_accepting():
            return  # an end-of-turn token where the grammar may end: generation stops here
        if not self.matcher.consume_token(int(token)):
            self.cache.forget(self.grammar)
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
            self.cache.forget(self.grammar)
            raise GenerationError(
                f"the grammar rejected its own forced tokens: {self.matcher.get_error()}",
                hint="this is a bug in the grammar engine; report it with the schema",
            )
        return toks

    def validate(self, tokens: Sequence[int]) -> int:
        """How many of *tokens*, in order, the grammar would accept from here (nothing is consumed)."""
        if not tokens or self.matcher.is_stopped():
            return 0
        return int(self.matcher.validate_tokens([int(t) for t in tokens]))

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
    source: Any,
    grammar: str,
    tokens: list[int],
    *,
    limits: llguidance.LLParserLimits | None = None,
) -> tuple[bool, str]:
    """Feed *tokens* to a fresh matcher: ``(True, "")`` when all are allowed and the result is complete.
    *source* as for :class:`GrammarConstraint`."""
    cache = _as_cache(source)
    m = cache.matcher(grammar, limits)
    if not m.consume_tokens([int(t) for t in tokens]):
        cache.forget(grammar)
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


def closing_tokens(backend: Backend) -> ClosingTokens:
    """Token ids that help finish JSON, computed once per model:

    * *quotes* start with ``"`` followed only by closers/spaces (end a string, maybe more);
    * *closers* are made only of ``]`` / ``}`` (and spaces), plus end-of-generation tokens;
    * *enders* end a value where the text continues: they start with ``,``, ``]`` or ``}``, plus
      end-of-generation tokens.

    Used to wrap up a generation that runs away: biasing them makes the grammar-valid output end
    as soon as the schema allows.
    """
    return constraints(backend).closing


def _scan_closing(n_vocab: int, token_bytes: Callable[[int], bytes], is_eog: Callable[[int], bool]) -> ClosingTokens:
    eog = [t for t in range(n_vocab) if is_eog(t)]
    skip = set(eog)
    return _closing_sets(((t, token_bytes(t)) for t in range(n_vocab) if t not in skip), eog)


def _scan_pieces(pieces: list[bytes], eog: set[int]) -> ClosingTokens:
    """:func:`_scan_closing` over the vocabulary's pieces as llguidance reads them (control and
    ``<...>`` user-defined tokens marked with a leading ``0xff``: they end nothing in JSON, as their
    empty rendering in :func:`_scan_closing` does)."""
    return _closing_sets(((t, p) for t, p in enumerate(pieces) if t not in eog and p[:1] != b"\xff"), sorted(eog))


def _closing_sets(pieces: Iterable[tuple[int, bytes]], eog: list[int]) -> ClosingTokens:
    """Classify ``(token, bytes)`` pairs (end-of-generation tokens left out: *eog*, in token order,
    joins the closers and the enders)."""
    quotes, closers, enders = [], [], []
    for t, piece in pieces:
        b = piece.strip()
        if not b or b[0] not in b',]}"':
            continue
        if b[0] in b",]}":
            enders.append(t)
        if b[0:1] == b'"' and all(c in _CLOSERS or c == 44 for c in b[1:]) and b.count(b",") == 0:
            quotes.append(t)
        elif all(c in _CLOSERS for c in b):
            closers.append(t)
    return ClosingTokens(*(np.asarray(sorted(x), dtype=np.int64) for x in (quotes, closers + eog, enders + eog)))


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


class JsonWrapUp:
    """A logits processor that steers a runaway JSON generation to close quickly.

    Called by the loop with the tokens generated so far and the (already masked) logits. It
    switches on (``on``) once the output reaches *soft_limit* tokens, or ends in one short cycle
    repeated (up to :attr:`max_period` tokens, checked every 8 tokens). Once on it boosts, inside a
    string, tokens that end the string; outside, tokens that close arrays and objects or end
    generation. Independently, a number longer than :data:`MAX_NUMBER_CHARS` gets the tokens that
    end it boosted (``steered`` records that this happened). Only allowed tokens are boosted
    (``-inf`` stays ``-inf``), so the output stays exactly as valid as the grammar makes it.
    """

    def __init__(
        self, tokens: ClosingTokens | Callable[[], ClosingTokens], token_bytes: Callable[[int], bytes], *,
        soft_limit: int = 1 << 30, bias: float = 40.0, max_period: int = 24,
    ) -> None:
        # the token sets, or how to get them: a scan of the whole vocabulary (1.5 s for Gemma's 262k
        # tokens) that only a runaway generation or an overlong number needs, so not the first call
        self._tokens: ClosingTokens | None = tokens if isinstance(tokens, ClosingTokens) else None
        self._source = tokens
        self.token_bytes = token_bytes
        self.soft_limit = soft_limit
        self.bias = bias
        self.max_period = max_period
        self.on = False
        self.steered = False
        self.scan = JsonScan()
        self._seen = 0
        self._checked = 0

    def _get(self) -> ClosingTokens:
        if self._tokens is None:
            self._tokens = self._source()  # type: ignore[operator]
        return self._tokens

    quotes = property(lambda self: self._get().quotes)
    closers = property(lambda self: self._get().closers)
    enders = property(lambda self: self._get().enders)

    @classmethod
    def for_backend(cls, backend: Backend, **kw: Any) -> JsonWrapUp:
        return cls(lambda: closing_tokens(backend), backend.token_bytes, **kw)

    def __call__(self, tokens: Sequence[int], logits: np.ndarray) -> None:
        for t in tokens[self._seen:]:
            self.scan.feed(self.token_bytes(t))
        self._seen = len(tokens)
        self.watch(tokens)
        self.boost(logits)

    def watch(self, tokens: Sequence[int]) -> None:
        """Switch on at the soft limit or on a repeated cycle."""
        if self.on:
            return
        if len(tokens) >= self.soft_limit:
            self.on = True
        elif len(tokens) // 8 > self._checked:
            self._checked = len(tokens) // 8
            self.on = repeating(tokens, max_period=self.max_period)

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
