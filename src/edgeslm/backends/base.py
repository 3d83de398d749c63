"""The engine boundary: the small protocol every backend implements.

A backend owns one loaded model and one KV cache (a single sequence). The decoding layer drives
it token by token:

* ``tokenize(text, special=...)`` / ``token_bytes(tok)`` convert text and tokens;
* ``eval(tokens)`` appends tokens to the KV cache and leaves the logits of the last one readable
  through ``logits()`` (a float32 view of length ``n_vocab``, valid until the next ``eval``);
* ``tokens`` lists what the cache holds and ``trim(n)`` keeps only its first ``n`` tokens, which
  is all prefix reuse needs;
* ``close()`` frees the engine's memory.

Backends are not thread-safe; :class:`edgeslm.Model` serializes calls.
A new engine (MLX, an NPU runtime) is one module implementing this class, nothing more.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Backend"]


class Backend(ABC):
    """A loaded model plus its KV cache."""

    name: str = "base"
    device: str = "cpu"
    path: str = ""
    n_ctx: int = 0
    n_vocab: int = 0
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = False
    chat_template: str | None = None
    metadata: dict[str, Any]

    def __init__(self) -> None:
        self.metadata = {}
        self._tokens: list[int] = []

    @property
    def tokens(self) -> list[int]:
        """Tokens currently in the KV cache, in order."""
        return self._tokens

    @abstractmethod
    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Tokenize *text*; control tokens are parsed only when *special* is true. No BOS added."""

    @abstractmethod
    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as their text)."""

    @abstractmethod
    def is_eog(self, token: int) -> bool:
        """Whether *token* ends generation (EOS, EOT, ...)."""

    @abstractmethod
    def eval(self, tokens: Sequence[int]) -> None:
        """Append *tokens* to the KV cache; afterwards ``logits()`` is for the last one."""

    @abstractmethod
    def logits(self) -> np.ndarray:
        """Logits for the next token (float32, shape ``(n_vocab,)``); may be a view."""

    @abstractmethod
    def trim(self, n_keep: int) -> None:
        """Drop everything after the first *n_keep* tokens from the KV cache."""

    def close(self) -> None:
        """Free the engine's resources. Idempotent."""
        self._tokens = []

    def memory_bytes(self) -> int:
        """Approximate memory held by weights and cache (0 when unknown)."""
        return 0

    def constraint_tokenizer(self) -> Any:
        """An ``llguidance.LLTokenizer`` for this vocabulary (built once, then cached)."""
        raise NotImplementedError
