"""Decoding constraints for replies that may call tools.

:func:`call_constraint` composes a :class:`~edgeslm.decoding.constrain.GrammarConstraint` of calls
with two things:

* every end-of-generation token of the model (``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``...)
  is allowed wherever the grammar could end, not only the one EOS token llguidance knows;
* *wrap-up* (:class:`~edgeslm.decoding.constrain.JsonWrapUp`): once switched on (a runaway call),
  tokens that end a JSON string or close arrays, objects and the reply are boosted, among the
  allowed ones only, so validity is unaffected.

:class:`ToolReply` is what the decoding loop sees. With ``tool_choice="required"`` it constrains the
reply from its first token. In ``auto`` it is *lazy*: the text stays free (no mask at all) until it
commits to a call (:class:`~edgeslm.tools.calls.CallDetector`); from there the call grammar takes
over. The tokens already written from the start of the call are fed to the grammar first, so the
call as a whole, its opening included, is one the grammar accepts.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any

import numpy as np

from ..decoding.constrain import GrammarConstraint, JsonWrapUp, constraints
from .calls import CallDetector

__all__ = ["ToolReply", "call_constraint", "eog_tokens"]

#: Cycles up to this many tokens count as a runaway call (extraction: 24).
MAX_PERIOD = 16


def eog_tokens(engine: Any) -> np.ndarray:
    """All end-of-generation token ids of the engine's vocabulary (computed once per model)."""
    return constraints(engine).eog


def call_constraint(engine: Any, grammar: str, soft_limit: int) -> tuple[GrammarConstraint, JsonWrapUp]:
    """The grammar of calls, with every end-of-generation token of the model allowed wherever the
    grammar could end (not only the one EOS llguidance knows), and the wrap-up that steers a
    runaway call to close (see :class:`~edgeslm.decoding.constrain.JsonWrapUp`)."""
    inner = GrammarConstraint(engine, grammar, also_end=eog_tokens(engine))
    return inner, JsonWrapUp.for_backend(engine, soft_limit=soft_limit, max_period=MAX_PERIOD)


class ToolReply:
    """The constraint of one reply that may call tools (see the module docstring).

    ``text`` is the reply so far; ``call_at`` the index in it where the calls begin (``None`` while
    the reply is text); ``hold`` the index before which the text surely belongs to no call (what a
    stream may show); ``error`` why a call that began could not be continued under its grammar.
    """

    n_allowed: int | None = None  # counted once the call grammar is on

    def __init__(
        self,
        engine: Any,
        *,
        detector: CallDetector | None = None,
        grammar: Callable[[str], str] | None = None,
        required: str | None = None,
        soft_limit: int = 1 << 30,
    ) -> None:
        self.engine = engine
        self.detector = detector
        self._grammar = grammar
        self.soft_limit = soft_limit
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self._bytes = bytearray()
        self._tokens: list[int] = []
        self._ends: list[int] = []  # byte offset where each token ends
        self.call_at: int | None = None
        self.hold = 0
        self.error: str | None = None
        self.inner: GrammarConstraint | None = None
        self.wrap: JsonWrapUp | None = None
        self._call_tokens: list[int] = []
        self._call_byte = 0  # where the calls begin, in bytes
        self._scanned = 0  # bytes of the call fed to the wrap-up scanner
        if required is not None:
            self.inner, self.wrap = call_constraint(engine, required, soft_limit)
            self.call_at = 0

    # -------------------------------------------------------------- the Constraint protocol
    def mask(self, logits: np.ndarray) -> None:
        if self.inner is not None and self.wrap is not None:
            self.inner.mask(logits)
            self.n_allowed = self.inner.n_allowed
            self.wrap.boost(logits)

    def consume(self, token: int) -> None:
        self._append(token)
        if self.inner is not None:
            self.inner.consume(token)
            self._track([token])
            return
        if self.detector is not None:
            at = self.detector.search(self.text, self.hold)
            if at is None:
                self.hold = self.detector.hold(self.text, self.hold)
            else:
                self._begin(at)

    def forced(self) -> list[int]:
        if self.inner is None or self.error is not None:
            return []
        toks = self.inner.forced()
        for t in toks:
            self._append(t)
        self._track(toks)
        return toks

    def done(self) -> bool:
        return self.error is not None or (self.inner is not None and self.inner.done())

    def accepting(self) -> bool:
        if self.inner is not None:
            return self.inner.accepting()
        return self.error is None

    # -------------------------------------------------------------- helpers
    def finish(self) -> None:
        """Flush the text decoder at the end of generation."""
        self.text += self._decoder.decode(b"", final=True)

    @property
    def complete(self) -> bool:
        """Whether the calls that began are complete under their grammar."""
        return self.error is None and self.inner is not None and self.inner.accepting()

    def _append(self, token: int) -> None:
        piece = self.engine.token_bytes(token)
        self._tokens.append(token)
        self._bytes += piece
        self._ends.append(len(self._bytes))
        self.text += self._decoder.decode(piece)

    def _track(self, tokens: list[int]) -> None:
        assert self.wrap is not None
        self._call_tokens.extend(tokens)
        start = self._call_byte + self._scanned
        self.wrap.scan.feed(bytes(self._bytes[start:]))  # the call's own bytes, not the text before it
        self._scanned = len(self._bytes) - self._call_byte
        self.wrap.watch(self._call_tokens)

    def _begin(self, at: int) -> None:
        """The reply commits to a call at ``text[at]``: switch the call grammar on and feed it the
        tokens written from there (the first one may begin with text before the call: ``pre``)."""
        assert self._grammar is not None
        self.call_at = at
        head = self.text[:at].encode("utf-8")
        if bytes(self._bytes[: len(head)]) != head:  # undecodable bytes before the call
            self.error = "the text before the call is not valid UTF-8"
            return
        last = first = next(i for i, end in enumerate(self._ends) if end > len(head))
        start = self._ends[first - 1] if first else 0
        while first and 0x80 <= self._bytes[start] < 0xC0:  # a character split across tokens
            first -= 1
            start = self._ends[first - 1] if first else 0
        if start < len(head):  # text before the call shares its first token: it must be plain text
            tok = constraints(self.engine).tokenizer
            if any(tok.is_special_token(t) for t in self._tokens[first : last + 1]):
                self.error = "a control token comes right before the call"
                return
        try:
            pre = bytes(self._bytes[start : len(head)]).decode("utf-8")
        except UnicodeDecodeError:
            self.error = "the text before the call is not valid UTF-8"
            return
        inner, wrap = call_constraint(self.engine, self._grammar(pre), self.soft_limit)
        tokens = self._tokens[first:]
        if inner.matcher.validate_tokens(tokens) < len(tokens):
            self.error = f"the call's opening does not fit the call syntax: {self.text[at:at + 60]!r}"
            return
        inner.matcher.consume_tokens(tokens)
        self.inner, self.wrap = inner, wrap
        self._call_byte = len(head)
        self._track(tokens)
