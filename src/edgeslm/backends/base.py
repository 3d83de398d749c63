"""The engine boundary: the small protocol every backend implements.

A backend owns one loaded model and one KV cache (a single sequence). The decoding layer drives
it token by token:

* ``tokenize(text, special=...)`` / ``token_bytes(tok)`` convert text and tokens;
* ``eval(tokens)`` appends tokens to the KV cache and leaves the logits of the last one readable
  through ``logits()`` (a float32 view of length ``n_vocab``, valid until the next ``eval``);
* ``tokens`` lists what the cache holds and ``trim(n)`` keeps only its first ``n`` tokens, which
  is all prefix reuse needs;
* ``close()`` frees the engine's memory.

Several sequences in one context (batched decoding): a backend whose ``max_sequences`` is above 1
keeps one KV cache per sequence id ``0 .. max_sequences-1`` (sequence 0 is the one ``tokens``,
``eval``, ``logits`` and ``trim`` act on). ``eval_many([(seq, tokens), ...])`` appends tokens to
several sequences in one engine call, after which ``logits_of(seq)`` holds each one's next-token
logits; ``seq_copy(src, dst, n)`` shares the first ``n`` cached tokens of one sequence with another
(a common prompt prefix is evaluated once), ``seq_trim`` and ``seq_tokens`` work per sequence.
``fork(n_seq, n_ctx)`` opens such a context on the same weights next to the single-sequence one
(``Model.extract_many`` does, for the duration of the call).

Backends are not thread-safe; :class:`edgeslm.Model` serializes calls.
A new engine (MLX, an NPU runtime) is one module implementing this class and describing itself
with a :class:`~edgeslm.backends.registry.BackendSpec` (see :mod:`edgeslm.backends.registry`).
This class declares everything the rest of edgeslm uses of a backend; nothing else is touched.
Constrained decoding keeps its own per-model state (the llguidance tokenizer, compiled grammars)
in :mod:`edgeslm.decoding.constrain`, not on the backend.
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
    n_ctx_train: int = 0
    """The context length the model was trained with (0: unknown)."""
    plan: Any = None
    """The :class:`edgeslm.Plan` it was opened with (set by ``edgeslm.load``)."""
    metadata: dict[str, Any]
    """The model's own metadata (GGUF keys, or their equivalent): ``general.architecture``..."""

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

    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token id of the vocabulary (engines may find them faster)."""
        return [t for t in range(self.n_vocab) if self.is_eog(t)]

    def token_text(self, token: int) -> str:
        """The text of a token (a control token's own name, e.g. ``<|im_end|>``)."""
        return self.token_bytes(token).decode("utf-8", "replace")

    def control_tokens(self) -> list[int]:
        """Control tokens of the vocabulary (never produced by plain text); by default the
        end-of-generation tokens and BOS."""
        out = [t for t in range(self.n_vocab) if self.is_eog(t)]
        if self.bos_id is not None and self.bos_id not in out:
            out.append(self.bos_id)
        return out

    @abstractmethod
    def eval(self, tokens: Sequence[int]) -> None:
        """Append *tokens* to the KV cache; afterwards ``logits()`` is for the last one."""

    @abstractmethod
    def logits(self) -> np.ndarray:
        """Logits for the next token (float32, shape ``(n_vocab,)``); may be a view."""

    #: Whether :meth:`eval_rows` gives the logits of several positions from one engine call (the
    #: decoding loop then checks drafted tokens in the call that evaluates the chosen one).
    verifies: bool = False

    def eval_rows(self, tokens: Sequence[int], n_rows: int) -> np.ndarray:
        """Append *tokens* in one engine call and return the logits after each of the last *n_rows*
        of them (shape ``(n_rows, n_vocab)``); afterwards ``logits()`` is for the last one. Only
        engines that set :attr:`verifies` implement it."""
        raise NotImplementedError(f"{self.name} gives the logits of the last token only")

    @abstractmethod
    def trim(self, n_keep: int) -> None:
        """Drop everything after the first *n_keep* tokens from the KV cache."""

    # ------------------------------------------------------------------ several sequences
    max_sequences: int = 1

    def seq_tokens(self, seq: int) -> list[int]:
        """Tokens in the KV cache of sequence *seq*."""
        self._only_seq0(seq)
        return self._tokens

    def eval_many(self, batch: Sequence[tuple[int, Sequence[int]]]) -> None:
        """Append tokens to several sequences at once; then ``logits_of(seq)`` is each one's next logits."""
        for seq, toks in batch:
            self._only_seq0(seq)
            self.eval(toks)

    def logits_of(self, seq: int) -> np.ndarray:
        """Next-token logits of sequence *seq* after the last ``eval_many`` (or ``eval``)."""
        self._only_seq0(seq)
        return self.logits()

    def seq_trim(self, seq: int, n_keep: int) -> None:
        """Keep only the first *n_keep* tokens of sequence *seq*."""
        self._only_seq0(seq)
        self.trim(n_keep)

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        """Make sequence *dst* hold the first *n* cached tokens of *src* (shared, not recomputed)."""
        raise NotImplementedError(f"{self.name} holds one sequence per context")

    def fork(self, n_seq: int, n_ctx: int) -> Backend:
        """A new context on the same weights with *n_seq* sequences sharing a KV cache of *n_ctx*
        tokens, for batched decoding (its ``max_sequences`` is *n_seq*). It shares this backend's
        vocabulary (:attr:`vocab_owner`) and is closed with it at the latest; close it when done.
        Engines that cannot hold several sequences raise ``NotImplementedError``."""
        raise NotImplementedError(f"{self.name} holds one sequence per context")

    @property
    def vocab_owner(self) -> Backend:
        """The backend whose vocabulary this one uses (itself, unless it is a :meth:`fork` or a
        view of another): constrained decoding keeps one tokenizer and grammar cache per owner."""
        return self

    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token of context takes (0 when unknown)."""
        return 0

    # ------------------------------------------------------------------ adapters
    def adapter_names(self) -> list[str]:
        """The LoRA adapters loaded beside the base weights (see :meth:`load_adapter`)."""
        return []

    def load_adapter(self, name: str, path: str, scale: float = 1.0) -> None:
        """Load the adapter file *path* (already checked against the base) as *name*; it applies
        only while :meth:`use_adapter` names it. Engines without adapters raise ``AdapterError``."""
        from .._errors import AdapterError

        raise AdapterError(f"the {self.name} backend cannot apply LoRA adapters",
                           hint="load the model's GGUF with the llama.cpp backend to use adapters")

    def use_adapter(self, name: str | None) -> None:
        """Make *name* (``None``: the base alone) the adapter of the next evaluations. A switch
        empties the KV cache: what it holds was computed with other weights."""
        if name is not None:
            from .._errors import AdapterError

            raise AdapterError(f"no adapter {name!r} is loaded", hint="pass adapters={...} to edgeslm.load()")

    def _only_seq0(self, seq: int) -> None:
        if seq != 0:
            raise NotImplementedError(f"{self.name} holds one sequence per context (asked for sequence {seq})")

    def close(self) -> None:
        """Free the engine's resources. Idempotent."""
        self._tokens = []

    def memory_bytes(self) -> int:
        """Approximate memory held by weights and cache (0 when unknown)."""
        return 0

    def constraint_tokenizer(self) -> Any:
        """A new ``llguidance.LLTokenizer`` for this vocabulary. The decoding layer builds it once per
        model and keeps it (:func:`edgeslm.decoding.constrain.constraints`); engines need not cache.

        This default reads :meth:`token_bytes`, :meth:`control_tokens` and :meth:`tokenize`; an
        engine with a faster native path (llama.cpp's vocabulary) overrides it."""
        import llguidance

        controls = set(self.control_tokens())
        tokens = [b"\xff" + self.token_text(t).encode("utf-8") if t in controls else self.token_bytes(t)
                  for t in range(self.n_vocab)]
        eos = self.eos_id if self.eos_id is not None else next(iter(sorted(controls)), 0)
        backend = self

        class _Vocab:
            eos_token_id = eos
            bos_token_id = self.bos_id
            special_token_ids = sorted(controls)

            def __init__(self) -> None:
                self.tokens = tokens

            def __call__(self, data: bytes) -> list[int]:
                return backend.tokenize(data.decode("utf-8", "replace"), special=False)

        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocab()))
