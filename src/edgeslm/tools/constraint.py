"""The decoding constraint for replies that may call tools.

It wraps a :class:`~edgeslm.decoding.constrain.GrammarConstraint` built from a format's grammar and
adds two things the plain wrapper lacks:

* every end-of-generation token of the model (``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``...)
  is allowed wherever the grammar could end, not only the one EOS token llguidance knows;
* *wrap-up*: once switched on (a runaway call), tokens that end a JSON string or close arrays,
  objects and the reply are boosted, among the allowed ones only, so validity is unaffected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..decoding.constrain import GrammarConstraint, WrapUp, closing_tokens

__all__ = ["ToolConstraint", "eog_tokens"]


def eog_tokens(engine: Any) -> np.ndarray:
    """All end-of-generation token ids of the engine's vocabulary (computed once, cached on it)."""
    cached = getattr(engine, "_edgeslm_eog_ids", None)
    if cached is None:
        cached = np.asarray([t for t in range(engine.n_vocab) if engine.is_eog(t)], dtype=np.int64)
        try:
            engine._edgeslm_eog_ids = cached
        except AttributeError:  # pragma: no cover - engines with __slots__
            pass
    return cached


class ToolConstraint(WrapUp):
    """A :class:`~edgeslm.decoding.loop.Constraint` for tool replies (see the module docstring)."""

    max_period = 16  # cycles up to 16 tokens count as a runaway call (extraction: 24)

    def __init__(self, engine: Any, grammar: str, *, bias: float = 40.0) -> None:
        super().__init__(GrammarConstraint(engine.constraint_tokenizer(), grammar), closing_tokens(engine), bias)
        self.eog = eog_tokens(engine)

    def mask(self, logits: np.ndarray) -> None:
        saved = logits[self.eog].copy() if self.eog.size else None
        self.inner.mask(logits)
        if saved is not None and self.inner.accepting():
            logits[self.eog] = saved
        self.boost(logits)

    # The end-of-generation tokens put back after masking make the grammar's count of allowed
    # tokens too low, so no token of a tool reply is taken as the only option.
    n_allowed = None  # type: ignore[assignment]
