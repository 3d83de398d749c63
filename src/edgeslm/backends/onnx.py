"""ONNX Runtime GenAI backend over onnxruntime-genai's low-level ``Generator`` API.

One model, one generator, one sequence (batch size 1, ``max_length`` = ``n_ctx``). Tokens go in with
``Generator.append_tokens``, logits come out of ``Generator.get_logits`` (last position), and prefix
reuse trims the cache with ``Generator.rewind_to`` (or, where an engine build refuses to rewind, a fresh
generator re-fed with the kept tokens). No search or sampling of onnxruntime-genai is used: token
choice and constraints live in :mod:`edgeslm.decoding`.

Text goes through the Hugging Face ``tokenizers`` library on the folder's ``tokenizer.json``, because
onnxruntime-genai's tokenizer always turns control-token text such as ``<|im_start|>`` into control
tokens; ``tokenizers`` can encode that text as plain text (``encode_special_tokens``), which keeps
user content out of special-token parsing.

Over ~450 lines on purpose: the engine class implements the whole Backend contract over onnxruntime-
genai (tokenizer, generator rewinds, adapters); the file checks are in onnx_files.py, the adapter
reader in onnx_adapters.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import AdapterError, BackendUnavailableError, CorruptModelError, GenerationError
from .base import Backend
from .onnx_adapters import (
    _ADAPTER_HINT,
    _ELEM_TYPES,
    _NO_LORA_HINT,
    AdapterParameter,
    _fed_by_genai,
    _graph_inputs,
    _GraphInput,
    _shape_text,
    read_onnx_adapter,
)
from .registry import BackendSpec, OpenRequest, package_version

__all__ = ["AdapterParameter", "OnnxGenAIBackend", "read_onnx_adapter"]

_logger = logging.getLogger("edgeslm.onnx")

# Control tokens that end a turn in common chat formats (llama.cpp treats the same texts as end-of-generation).
EOG_TEXTS = frozenset(
    {
        "</s>",
        "<eos>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end|>",
        "<end_of_turn>",
        "<|return|>",
        "<|call|>",
        "<EOT>",
        "<｜end▁of▁sentence｜>",
    }
)
MAX_TEMPLATE_BYTES = 1 << 20  # a chat template larger than this is ignored (it is untrusted input)
_HEX_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_INSTALL_HINT = "pip install onnxruntime-genai (CPU), or onnxruntime-genai-cuda for NVIDIA GPUs"
_REBUILD_HINT = (
    "the folder may be damaged or written for another onnxruntime-genai version; download it again, "
    "or re-export it with `python -m onnxruntime_genai.models.builder`"
)


def _og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendUnavailableError("onnxruntime-genai is not installed", hint=_INSTALL_HINT) from exc
    return og


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte map, used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _decoder_kinds(state: dict[str, Any] | None) -> set[str]:
    """Types of the decoders in a tokenizer.json ``decoder`` section (flattening ``Sequence``)."""
    if not isinstance(state, dict):
        return set()
    kind = str(state.get("type", ""))
    if kind == "Sequence":
        out: set[str] = set()
        for d in state.get("decoders") or []:
            out |= _decoder_kinds(d)
        return out
    if kind == "Replace" and "▁" in json.dumps(state.get("pattern"), ensure_ascii=False):
        return {"Metaspace"}
    return {kind}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptModelError(f"{path} cannot be parsed: {e}", hint=_REBUILD_HINT) from e
    return data if isinstance(data, dict) else {}


def _token_content(v: Any) -> str | None:
    """A token given in tokenizer_config.json, as a string or as ``{"content": ...}``."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def _int_list(v: Any) -> list[int]:
    if isinstance(v, bool):
        return []
    if isinstance(v, int):
        return [v]
    if isinstance(v, list):
        return [x for x in v if isinstance(x, int) and not isinstance(x, bool)]
    return []


def _read_chat_template(root: Path, tok_config: dict[str, Any]) -> str | None:
    """The chat template shipped in the folder, passed through as an (untrusted) string."""
    t = tok_config.get("chat_template")
    if isinstance(t, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default") or next((v for v in named.values() if isinstance(v, str)), None)
    if isinstance(t, str) and t:
        return t if len(t.encode("utf-8")) <= MAX_TEMPLATE_BYTES else None
    jinja = root / "chat_template.jinja"
    if jinja.is_file() and jinja.stat().st_size <= MAX_TEMPLATE_BYTES:
        try:
            return jinja.read_text(encoding="utf-8") or None
        except (OSError, UnicodeDecodeError):
            return None
    data = _read_json(root / "chat_template.json") if (root / "chat_template.json").is_file() else {}
    t = data.get("chat_template")
    return t if isinstance(t, str) and t and len(t.encode("utf-8")) <= MAX_TEMPLATE_BYTES else None


class OnnxGenAIBackend(Backend):
    """An ONNX Runtime GenAI model folder (``genai_config.json`` + ``.onnx`` + ``tokenizer.json``)."""

    name = "onnx"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        device: str = "cpu",
        n_threads: int | None = None,
    ) -> None:
        super().__init__()
        og = _og()
        self._og = og
        self._model: Any = None
        self._gen: Any = None
        self._params: Any = None
        self._logits: np.ndarray | None = None
        self._lltok: Any = None  # for token_bytes
        self._og_adapters: Any = None  # og.Adapters of the model, made by the first load_adapter
        self._adapter_files: dict[str, Path] = {}
        self._active_adapter: str | None = None
        self._lora_inputs: dict[str, _GraphInput] | None = None  # read by the first load_adapter
        self._lora_required: list[str] = []  # LoRA inputs without a default: no call can run without an adapter
        root = Path(path)
        self.path = os.fspath(path)
        self._root = root
        cfg = _read_json(root / "genai_config.json")
        mcfg = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
        self._config = cfg
        self._tok_config = _read_json(root / "tokenizer_config.json")
        self.device = self._pick_device(og, device)
        self._model = self._load_model(og, root, n_threads)
        self._tok = self._load_tokenizer(root)

        ctx_len = mcfg.get("context_length")
        self.n_ctx_train = ctx_len if isinstance(ctx_len, int) and ctx_len > 0 else n_ctx
        self.n_ctx = int(max(1, min(n_ctx, self.n_ctx_train)))
        vocab = mcfg.get("vocab_size")
        self.n_vocab = vocab if isinstance(vocab, int) and vocab > 0 else self._tok.get_vocab_size(True)

        self._added: dict[int, tuple[str, bool]] = {
            int(i): (t.content, bool(t.special)) for i, t in self._tok.get_added_tokens_decoder().items()
        }
        self.bos_id = self._first_id(mcfg.get("bos_token_id"), self._tok_config.get("bos_token"))
        self.eos_id = self._first_id(mcfg.get("eos_token_id"), self._tok_config.get("eos_token"))
        self._eog = self._eog_ids(mcfg)
        self.add_bos = self._detect_add_bos()
        self.chat_template = _read_chat_template(root, self._tok_config)
        self.metadata = self._metadata(mcfg)

        state = self._tok.decoder.__getstate__() if self._tok.decoder is not None else b"null"
        kinds = _decoder_kinds(json.loads(state))
        self._piece_mode = "bytelevel" if "ByteLevel" in kinds else "metaspace" if "Metaspace" in kinds else "llg"
        self._byte_dec = _byte_decoder() if self._piece_mode == "bytelevel" else {}
        self._piece_cache: dict[int, bytes] = {}
        self._new_generator()

    @property
    def og_model(self) -> Any:
        """The ``onnxruntime_genai.Model`` (for benchmarks that drive its own generator loop)."""
        return self._model

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _pick_device(og: Any, device: str) -> str:
        if device in ("auto", "cpu", ""):
            return "cpu"
        if device in ("cuda", "gpu") and og.is_cuda_available():
            return "cuda"
        if device == "gpu" and og.is_dml_available():
            return "dml"
        raise BackendUnavailableError(
            f"device={device!r} is not available to this onnxruntime-genai build",
            hint="use device='cpu', or install onnxruntime-genai-cuda (NVIDIA) / onnxruntime-genai-directml "
            "(Windows); the ONNX backend has no Metal support, use the llama.cpp backend on Apple GPUs",
        )

    def _load_model(self, og: Any, root: Path, n_threads: int | None) -> Any:
        try:
            config = og.Config(str(root))
            config.clear_providers()
            if self.device != "cpu":
                config.append_provider(self.device)
            if n_threads:
                opts = {"intra_op_num_threads": int(n_threads)}
                config.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
            return og.Model(config)
        except Exception as exc:
            raise CorruptModelError(f"onnxruntime-genai could not load {root}: {exc}", hint=_REBUILD_HINT) from exc

    @staticmethod
    def _load_tokenizer(root: Path) -> Any:
        try:
            import tokenizers
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise BackendUnavailableError(
                "the ONNX backend needs the `tokenizers` package", hint="pip install tokenizers"
            ) from exc
        tj = root / "tokenizer.json"
        if not tj.is_file():
            raise CorruptModelError(
                f"{root} has no tokenizer.json",
                hint="edgeslm needs the Hugging Face fast tokenizer file; re-export the folder with "
                "`python -m onnxruntime_genai.models.builder`, which writes it",
            )
        try:
            tok = tokenizers.Tokenizer.from_file(str(tj))
        except Exception as exc:
            raise CorruptModelError(f"{tj} cannot be loaded: {exc}", hint=_REBUILD_HINT) from exc
        if not hasattr(tok, "encode_special_tokens"):
            raise BackendUnavailableError(
                f"tokenizers {tokenizers.__version__} cannot encode control-token text as plain text",
                hint="pip install -U 'tokenizers>=0.19'",
            )
        tok.no_padding()
        tok.no_truncation()
        return tok

    def _first_id(self, from_config: Any, from_tok_config: Any) -> int | None:
        ids = _int_list(from_config)
        if ids:
            return ids[0]
        text = _token_content(from_tok_config)
        tid = self._tok.token_to_id(text) if text else None
        return int(tid) if tid is not None else None

    def _eog_ids(self, mcfg: dict[str, Any]) -> frozenset[int]:
        ids = set(_int_list(mcfg.get("eos_token_id")))
        if self.eos_id is not None:
            ids.add(self.eos_id)
        text = _token_content(self._tok_config.get("eos_token"))
        tid = self._tok.token_to_id(text) if text else None
        if tid is not None:
            ids.add(int(tid))
        ids.update(i for i, (content, special) in self._added.items() if special and content in EOG_TEXTS)
        return frozenset(i for i in ids if 0 <= i < self.n_vocab)

    def _detect_add_bos(self) -> bool:
        cfg = self._tok_config.get("add_bos_token")
        if isinstance(cfg, bool):
            return cfg
        if self.bos_id is None:
            return False
        with_special = self._tok.encode("a", add_special_tokens=True).ids
        return bool(with_special) and with_special[0] == self.bos_id

    def _metadata(self, mcfg: dict[str, Any]) -> dict[str, Any]:
        arch = mcfg.get("type") if isinstance(mcfg.get("type"), str) else ""
        dec = mcfg.get("decoder") if isinstance(mcfg.get("decoder"), dict) else {}
        md: dict[str, Any] = {
            "general.architecture": arch,
            "general.name": self._root.name,
            "general.file_type": "onnx",
            f"{arch}.context_length": self.n_ctx_train,
            f"{arch}.vocab_size": self.n_vocab,
        }
        for key, src in (
            ("block_count", "num_hidden_layers"),
            ("embedding_length", "hidden_size"),
            ("attention.head_count", "num_attention_heads"),
            ("attention.head_count_kv", "num_key_value_heads"),
        ):
            if isinstance(dec.get(src), int):
                md[f"{arch}.{key}"] = dec[src]
        if self.chat_template:
            md["tokenizer.chat_template"] = self.chat_template
        return md

    def _new_generator(self) -> None:
        og = self._og
        params = og.GeneratorParams(self._model)
        params.set_search_options(max_length=self.n_ctx, batch_size=1)
        self._params = params
        self._gen = None
        self._logits = None
        gen = og.Generator(self._model, params)
        if self._active_adapter is not None:
            # One generator holds its adapter for its whole life: onnxruntime-genai can add an adapter to
            # a generator but not take it off, so a switch (to another adapter or the base) is a new one.
            try:
                gen.set_active_adapter(self._og_adapters, self._active_adapter)
            except Exception as exc:
                name, self._active_adapter = self._active_adapter, None
                self._gen = og.Generator(self._model, params)
                raise AdapterError(f"onnxruntime-genai could not switch to adapter {name!r}: {exc}",
                                   hint="load the model again") from exc
        self._gen = gen

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str, *, special: bool) -> list[int]:
        if not text:
            return []
        tok = self._tok
        tok.encode_special_tokens = not special
        try:
            return list(tok.encode(text, add_special_tokens=False).ids)
        finally:
            tok.encode_special_tokens = False

    def token_bytes(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            piece = self._piece_cache[token] = self._compute_bytes(int(token))
        return piece

    def _compute_bytes(self, token: int) -> bytes:
        added = self._added.get(token)
        if added is not None:
            return added[0].encode("utf-8")
        text = self._tok.id_to_token(token)
        if text is None:
            return b""
        if self._piece_mode == "bytelevel":
            dec = self._byte_dec
            if all(c in dec for c in text):
                return bytes(dec[c] for c in text)
            return text.encode("utf-8")
        if self._piece_mode == "metaspace":
            m = _HEX_BYTE.fullmatch(text)
            if m:
                return bytes([int(m.group(1), 16)])
            return text.replace("▁", " ").encode("utf-8")
        return bytes(self.constraint_tokenizer().decode_bytes([token]))

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def token_text(self, token: int) -> str:
        """The token's text with control tokens rendered (for display and templates)."""
        return self.token_bytes(token).decode("utf-8", "replace")

    # ------------------------------------------------------------------ KV cache
    def eval(self, tokens: Sequence[int]) -> None:
        if self._gen is None:
            raise GenerationError("the model is closed")
        if not tokens:
            return
        if self._active_adapter is None and self._lora_required:
            missing = self._lora_required
            raise AdapterError(
                f"{self._root.name} cannot run without an adapter: its LoRA inputs {missing[:3]} have no "
                "default values", hint=f"pass adapter= one of {sorted(self._adapter_files)} to each call, or "
                "export the model with optional LoRA inputs (Olive's ExtractAdapters, optional_inputs=True)")
        if len(self._tokens) + len(tokens) > self.n_ctx:
            raise GenerationError(
                f"KV cache overflow: {len(self._tokens)} + {len(tokens)} > n_ctx={self.n_ctx}",
                hint="load the model with a larger n_ctx=",
            )
        arr = np.asarray(tokens, dtype=np.int32)
        self._logits = None
        try:
            self._gen.append_tokens(arr)
        except Exception as exc:
            self._resync()
            raise GenerationError(
                f"onnxruntime-genai failed to evaluate {len(arr)} tokens: {exc}",
                hint="the context may be full (raise n_ctx=) or memory exhausted",
            ) from exc
        self._tokens.extend(arr.tolist())

    def _resync(self) -> None:
        """After a failed append, keep our token list in line with what the generator holds."""
        try:
            n = int(self._gen.token_count())
        except Exception:
            n = -1
        if n == len(self._tokens):
            return
        self.trim(0 if n < 0 or n > len(self._tokens) else n)

    def logits(self) -> np.ndarray:
        if self._logits is None:
            if self._gen is None:
                raise GenerationError("the model is closed")
            if not self._tokens:
                raise GenerationError("no logits yet: evaluate at least one token first")
            raw = np.asarray(self._gen.get_logits())
            last = raw.reshape(-1, raw.shape[-1])[-1]
            self._logits = last if last.dtype == np.float32 else last.astype(np.float32)
        return self._logits

    def trim(self, n_keep: int) -> None:
        if self._gen is None:
            return
        n_keep = max(0, min(n_keep, len(self._tokens)))
        if n_keep == len(self._tokens):
            return
        self._logits = None
        try:
            self._gen.rewind_to(n_keep)
        except Exception as exc:
            # Some engine configurations cannot rewind: start a fresh generator and re-feed the prefix.
            _logger.debug("rewind_to(%d) failed (%s); rebuilding the generator", n_keep, exc)
            kept = self._tokens[:n_keep]
            self._tokens = []
            self._new_generator()
            if kept:
                self.eval(kept)
            return
        del self._tokens[n_keep:]

    # ------------------------------------------------------------------ adapters
    def adapter_names(self) -> list[str]:
        return list(self._adapter_files)

    def load_adapter(self, name: str, path: str, scale: float = 1.0) -> None:
        """Load an ONNX Runtime adapter file (``.onnx_adapter``, or a folder holding exactly one) as
        *name*, after checking it in Python against this model's LoRA graph inputs (names, element
        types, shapes); onnxruntime-genai reads only a file that passed. A model whose graph has no
        LoRA inputs cannot take any adapter: the error says so."""
        if self._model is None:
            raise GenerationError("the model is closed", hint="load it again with edgeslm.load()")
        if name in self._adapter_files:
            raise AdapterError(f"an adapter named {name!r} is already loaded", hint="give each adapter its own name")
        if scale != 1.0:
            raise AdapterError(
                f"adapter {name!r}: ONNX Runtime applies an adapter as exported, so scale={scale:g} cannot be "
                "honoured on the onnx backend",
                hint="pass scale 1.0 (or the path alone), and fold a scale into the adapter's LoRA B weights "
                "when exporting it; the llama.cpp backend takes a scale at load")
        file = self._adapter_file(name, Path(path))
        try:
            params = read_onnx_adapter(file)
        except AdapterError as exc:
            raise AdapterError(f"adapter {name!r} for {self._root.name}: {exc.message}", hint=exc.hint) from None
        self._check_adapter(name, file, params)
        og = self._og
        try:
            if self._og_adapters is None:
                self._og_adapters = og.Adapters(self._model)
            self._og_adapters.load(os.fspath(file), name)
        except Exception as exc:
            raise AdapterError(f"onnxruntime-genai could not load the adapter {name!r} ({file}): {exc}",
                               hint=_ADAPTER_HINT) from exc
        self._adapter_files[name] = file

    def use_adapter(self, name: str | None) -> None:
        if name == self._active_adapter:
            return
        if name is not None and name not in self._adapter_files:
            raise AdapterError(f"no adapter {name!r} is loaded",
                               hint=f"choose one of {sorted(self._adapter_files)}, or None for the base model")
        if self._model is None:
            raise GenerationError("the model is closed", hint="load it again with edgeslm.load()")
        # the cache holds keys and values computed with the other weights: the new generator starts empty
        self._active_adapter = name
        self._tokens = []
        self._new_generator()

    def _adapter_file(self, name: str, src: Path) -> Path:
        if src.is_dir():
            if (src / "adapter_config.json").exists():
                raise AdapterError(
                    f"adapter {name!r}: {src} is a PEFT folder; the onnx backend cannot apply LoRA adapters "
                    f"from PEFT folders: ONNX Runtime GenAI takes an .onnx_adapter file exported for "
                    f"{self._root.name}",
                    hint="convert the PEFT adapter with `olive convert-adapters` for a model exported with LoRA "
                    "inputs, or load the model's GGUF with the llama.cpp backend, which converts PEFT folders")
            found = sorted(src.glob("*.onnx_adapter"))
            if len(found) != 1:
                raise AdapterError(f"adapter {name!r}: {src} holds no single .onnx_adapter file "
                                   f"({len(found)} found)", hint=_ADAPTER_HINT)
            src = found[0]
        if not src.is_file():
            raise AdapterError(f"adapter {name!r}: {src} does not exist", hint=_ADAPTER_HINT)
        return src

    def _model_lora_inputs(self) -> dict[str, _GraphInput]:
        """Graph inputs of the model's ONNX file(s) that onnxruntime-genai does not feed itself: the
        inputs an adapter's parameters can fill (read once, from the protobuf)."""
        if self._lora_inputs is None:
            from .onnx_files import _Bad, collect_filenames

            mcfg = self._config.get("model") if isinstance(self._config.get("model"), dict) else {}
            dec = mcfg.get("decoder") if isinstance(mcfg.get("decoder"), dict) else {}
            dec_inputs = dec.get("inputs") if isinstance(dec.get("inputs"), dict) else {}
            names: list[str] = []
            collect_filenames(dec, names)
            files = [f for f in names if f.endswith(".onnx")]
            found: dict[str, _GraphInput] = {}
            for rel in files:
                target = self._root / rel
                try:
                    graph = _graph_inputs(target)
                except (OSError, _Bad) as exc:
                    raise CorruptModelError(f"{target.name} is not a readable ONNX model: {exc}",
                                            hint=_REBUILD_HINT) from None
                found.update({n: g for n, g in graph.items() if not _fed_by_genai(n, dec_inputs)})
            self._lora_inputs = found
            self._lora_required = sorted(n for n, g in found.items() if not g.has_default)
        return self._lora_inputs

    def _check_adapter(self, name: str, file: Path, params: dict[str, AdapterParameter]) -> None:
        """Every parameter of the adapter must be a LoRA input of the model, of its type and shape."""
        model = self._root.name
        inputs = self._model_lora_inputs()
        if not inputs:
            example = next(iter(params))
            raise AdapterError(
                f"{model} has no LoRA inputs, so adapter {name!r} ({file.name}, {len(params)} parameters such as "
                f"{example!r}) cannot apply to it: its graph takes only what onnxruntime-genai feeds it (token ids, "
                "attention mask, KV cache); the LoRA weights of an adapter are fed as graph inputs",
                hint=_NO_LORA_HINT)
        unknown = [p for p in params if p not in inputs]
        if unknown:
            raise AdapterError(
                f"adapter {name!r} ({file.name}) sets {len(unknown)} of its {len(params)} parameters that "
                f"{model} has no input for, e.g. {unknown[:3]} (the model's LoRA inputs are e.g. "
                f"{sorted(inputs)[:3]})",
                hint="use the adapter with the model export it was made for")
        for p in params.values():
            want = inputs[p.name]
            if want.elem_type and want.elem_type != p.elem_type:
                raise AdapterError(
                    f"adapter {name!r} ({file.name}): {p.name} is {p.dtype} but {model} takes "
                    f"{_ELEM_TYPES.get(want.elem_type, (f'type {want.elem_type}', 0))[0]}",
                    hint="export the adapter for this model (the same precision as its LoRA inputs)")
            if want.dims is not None and (
                    len(want.dims) != len(p.dims)
                    or any(isinstance(w, int) and w != d for w, d in zip(want.dims, p.dims, strict=True))):
                raise AdapterError(
                    f"adapter {name!r} ({file.name}): {p.name} is {list(p.dims)} but {model} takes "
                    f"{_shape_text(want.dims)}",
                    hint="the adapter was made for another base model (or another size of it)")
        for a_name, a in params.items():  # a float LoRA pair must agree on its rank
            if not a_name.endswith("lora_A.weight"):
                continue
            b = params.get(a_name[: -len("lora_A.weight")] + "lora_B.weight")
            if b is not None and len(a.dims) == 2 and len(b.dims) == 2 and a.dims[1] != b.dims[0]:
                raise AdapterError(
                    f"adapter {name!r} ({file.name}): {a_name} is {list(a.dims)} and its B {list(b.dims)}: "
                    "the ranks differ", hint="the adapter is damaged: export it again")
        missing = [n for n in self._lora_required if n not in params]
        if missing:
            raise AdapterError(
                f"adapter {name!r} ({file.name}) leaves out {len(missing)} LoRA inputs that {model} requires, "
                f"e.g. {missing[:3]}", hint="use the adapter with the model export it was made for")

    # ------------------------------------------------------------------ misc
    def memory_bytes(self) -> int:
        if self._model is None:
            return 0
        size = sum(f.stat().st_size for f in self._adapter_files.values() if f.is_file())
        for p in self._root.iterdir():
            if p.is_file() and (p.suffix in (".onnx", ".data") or p.name.endswith(".onnx.data")):
                size += p.stat().st_size
        dec = self._config.get("model", {}).get("decoder", {})
        layers, kv_heads, head = (dec.get(k) for k in ("num_hidden_layers", "num_key_value_heads", "head_size"))
        if all(isinstance(v, int) for v in (layers, kv_heads, head)):
            elem = 4 if self.device == "cpu" else 2  # builder defaults: fp32 cache on CPU, fp16 on GPU
            size += 2 * layers * kv_heads * head * self.n_ctx * elem  # the shared K/V buffers
        return size

    def constraint_tokenizer(self) -> Any:
        """llguidance's tokenizer from the model's ``tokenizer.json`` (also used for token bytes)."""
        if self._lltok is None:
            import llguidance

            eos = sorted(self._eog) or None
            self._lltok = llguidance.LLTokenizer(self._tok.to_str(), eos_token=eos)
        return self._lltok

    def close(self) -> None:
        self._gen = None
        self._params = None
        self._og_adapters = None
        self._model = None
        self._logits = None
        self._tokens = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ------------------------------------------------------------------------------------ registration


def _root(p: Path) -> Path:
    return p.parent if p.name == "genai_config.json" and p.is_file() else p


def _open(path: Path, req: OpenRequest) -> OnnxGenAIBackend:
    return OnnxGenAIBackend(path, n_ctx=req.n_ctx, device=req.device, n_threads=req.n_threads)


def _validate(path: Path) -> Any:
    from .onnx_files import validate_onnx_folder

    return validate_onnx_folder(path)


def _doctor() -> dict[str, Any]:
    """The ONNX Runtime GenAI row of ``edgeslm doctor``: its version and execution providers."""
    v = package_version("onnxruntime-genai") or package_version("onnxruntime-genai-cuda")
    out: dict[str, Any] = {"package": "onnxruntime-genai", "version": v}
    if v is None:
        out["error"] = "not installed: pip install onnxruntime-genai"
        return out
    providers = ["cpu"] + [name for name, dist in (("cuda", "onnxruntime-genai-cuda"),
                                                   ("dml", "onnxruntime-genai-directml")) if package_version(dist)]
    out["providers"] = providers
    ort = package_version("onnxruntime") or package_version("onnxruntime-gpu")
    if ort:
        out["onnxruntime"] = ort
    out["summary"] = f"providers: {', '.join(providers)}"
    return out


def _shape(info: Any, size: int) -> Any:
    from .onnx_files import onnx_shape

    return onnx_shape(info, size) if isinstance(getattr(info, "config", None), dict) else None


SPEC = BackendSpec(
    name="onnx",
    formats=("onnx",),
    devices=("cpu", "cuda"),
    describe="an ONNX Runtime GenAI folder (or its genai_config.json)",
    opens=lambda p: p.is_dir() and (p / "genai_config.json").is_file(),
    open=_open,
    root=_root,
    validate=_validate,
    requires=("onnxruntime_genai",),
    install_hint="pip install onnxruntime-genai (or onnxruntime-genai-cuda)",
    shape=_shape,
    doctor=_doctor,
)
