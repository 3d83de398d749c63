"""A PEFT LoRA folder (TRL, Unsloth, Axolotl, ``edgeslm finetune``) to a GGUF LoRA adapter for llama.cpp.

PEFT writes ``adapter_config.json`` and ``adapter_model.safetensors`` with tensors named after the
Hugging Face modules (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``, shapes
``A: (r, in)``, ``B: (out, r)``). llama.cpp reads ``blk.0.attn_q.weight.lora_a`` / ``.lora_b`` in
the same shapes, from a GGUF with ``general.type = "adapter"`` and the base's architecture. Three
things change on the way:

* **names**, through the ``gguf`` package's map of Hugging Face to GGUF tensor names;
* **the Q/K row order** for the ``llama`` architecture: its GGUF converter permutes the rows of
  ``q_proj`` and ``k_proj`` (rotary halves interleaved per head), so ``B`` of those modules is
  permuted the same way (``A`` acts on the input and is unchanged);
* **the scale** ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA, per module with ``rank_pattern`` /
  ``alpha_pattern``) is folded into ``B``, and no ``adapter.lora.alpha`` is written: llama.cpp then
  applies ``B @ A`` times the scale the app asks for (1.0 by default), exactly PEFT's update.

The safetensors file is parsed here (no torch, no pickle): it is untrusted input, and every offset
and shape is checked. DoRA, LoRA on embeddings, biases and ``modules_to_save`` have no GGUF LoRA
form and are refused with the reason.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import AdapterError

__all__ = ["PERMUTED_QK", "adapter_files", "convert_peft", "read_peft_config", "read_safetensors"]

#: Architectures whose GGUF converter permutes the rows of q_proj and k_proj.
PERMUTED_QK = frozenset({"llama"})
MAX_HEADER = 64 << 20
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8")}
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[A-Za-z0-9_-]+))?\.weight$")


def adapter_files(folder: Path) -> tuple[Path, Path]:
    """``(adapter_config.json, adapter_model.safetensors)`` of a PEFT folder."""
    cfg = folder / "adapter_config.json"
    weights = folder / "adapter_model.safetensors"
    if not cfg.is_file():
        raise AdapterError(f"{folder} has no adapter_config.json, so it is not a PEFT adapter folder",
                           hint="pass the folder PEFT's save_pretrained() wrote, or a GGUF LoRA file")
    if not weights.is_file():
        pickled = (folder / "adapter_model.bin").exists()
        extra = " (adapter_model.bin is a pickle, which edgeslm never loads)" if pickled else ""
        raise AdapterError(f"{folder} has no adapter_model.safetensors{extra}",
                           hint="save the adapter with safe_serialization=True (the PEFT default)")
    return cfg, weights


def read_peft_config(path: Path) -> dict[str, Any]:
    """The LoRA settings of ``adapter_config.json``, checked."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(f"{path} is not readable JSON: {exc}", hint="the adapter folder is damaged: save it again"
                           ) from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{path} is not a JSON object", hint="the adapter folder is damaged: save it again")
    kind = str(cfg.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise AdapterError(f"{path.parent} is a {kind} adapter; only LoRA runs in llama.cpp",
                           hint="train a LoRA adapter (peft.LoraConfig)")
    for key, why in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (Conv1D layers)")):
        if cfg.get(key):
            raise AdapterError(f"{path.parent} uses {why}, which GGUF LoRA adapters cannot express",
                               hint=f"train without {key}")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"{path.parent} also saves whole modules ({cfg['modules_to_save']}), which a LoRA "
                           "adapter file cannot carry", hint="train with modules_to_save=None")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1 or isinstance(alpha, bool) \
            or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise AdapterError(f"{path}: r must be a positive integer and lora_alpha a number (got {r!r}, {alpha!r})",
                           hint="the adapter folder is damaged: save it again")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise AdapterError(f"{path}: {key} must be an object", hint="the adapter folder is damaged: save it again")
    return cfg


def read_safetensors(path: Path, *, limit: int | None = None) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as float32 arrays (F32, F16, BF16, F64); every offset,
    shape and size is checked against the file before any is read."""
    try:
        size = path.stat().st_size
        if limit is not None and size > limit:
            raise AdapterError(f"{path} is {size} bytes, more than a LoRA adapter of this base can be",
                               hint="check that the folder holds a LoRA adapter")
        with open(path, "rb") as f:
            if size < 8:
                raise AdapterError(f"{path} is truncated ({size} bytes)", hint="save or copy the adapter again")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse_safetensors(path, mm, size)
    except OSError as exc:
        raise AdapterError(f"cannot read {path}: {exc}", hint="check the path and its permissions") from None


def _parse_safetensors(path: Path, mm: Any, size: int) -> dict[str, np.ndarray]:
    def bad(why: str) -> AdapterError:
        return AdapterError(f"{path} is not a valid safetensors file: {why}",
                            hint="the adapter is damaged or truncated: save or copy it again")

    (n,) = struct.unpack_from("<Q", mm, 0)
    if n > min(MAX_HEADER, size - 8):
        raise bad(f"a header of {n} bytes does not fit in a file of {size}")
    try:
        header = json.loads(bytes(mm[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_len = size - 8 - n
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict):
            raise bad(f"tensor {name!r} has no description")
        dtype, shape, offs = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if dtype not in _DTYPES:
            raise bad(f"tensor {name!r} has dtype {dtype!r} (F32, F16, BF16 or F64 expected)")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31
                                                  for d in shape) or len(shape) > 4:
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs) \
                or not 0 <= offs[0] <= offs[1] <= data_len:
            raise bad(f"tensor {name!r} has data offsets {offs!r} outside the file's {data_len} data bytes")
        dt = _DTYPES[dtype]
        count = math.prod(shape)
        if offs[1] - offs[0] != count * dt.itemsize:
            raise bad(f"tensor {name!r}: {offs[1] - offs[0]} bytes for shape {shape} of {dtype}")
        # a copy of the bytes, never a view: no array may keep the map open past this function
        raw = np.frombuffer(mm[8 + n + offs[0] : 8 + n + offs[1]], dtype=dt, count=count).reshape(shape)
        if dtype == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.astype(np.float32)
        if not np.isfinite(arr).all():
            raise bad(f"tensor {name!r} holds NaN or infinite values")
        out[name] = arr
    return out


def _pattern_value(patterns: dict[str, Any] | None, module: str, default: float) -> float:
    """PEFT's rank_pattern/alpha_pattern: the value of the first key that ends the module's name."""
    for key, value in (patterns or {}).items():
        if re.search(rf"(^|\.){key}$", module):
            return float(value)
    return float(default)


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """The row order llama's GGUF converter gives q_proj/k_proj (per head, rotary halves interleaved)."""
    rows = w.shape[0]
    if n_head < 1 or rows % (2 * n_head):
        raise AdapterError(f"cannot reorder {rows} rows for {n_head} heads", hint="the adapter is for another base")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_names(arch: str, n_blocks: int) -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise AdapterError(f"converting a PEFT adapter needs the gguf package ({exc})",
                           hint="pip install gguf") from None
    arch_ids = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in arch_ids:
        raise AdapterError(f"PEFT adapters for the {arch!r} architecture cannot be converted",
                           hint="convert the adapter with llama.cpp's convert_lora_to_gguf.py and pass the .gguf")
    return gguf.get_tensor_name_map(arch_ids[arch], n_blocks)


def _gguf_name(names: Any, module: str) -> str | None:
    hf = module.removeprefix("base_model.model.")
    for candidate in (hf, hf.replace("model.language_model.", "model."), hf.replace("language_model.model.", "model.")):
        got = names.get_name(candidate)
        if got is not None:
            return f"{got}.weight"
    return None


def convert_peft(folder: Path, base: Any, out: Path) -> dict[str, Any]:
    """Write the GGUF LoRA of the PEFT adapter in *folder* for *base* (a
    :class:`~edgeslm.backends.gguf_file.GGUFInfo`) to *out*; returns a summary (modules, rank)."""
    cfg_path, weights_path = adapter_files(folder)
    cfg = read_peft_config(cfg_path)
    arch = base.architecture or ""
    meta = base.metadata

    def num(key: str) -> int:
        v = meta.get(f"{arch}.{key}")
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else 0

    n_blocks, n_head = num("block_count"), num("attention.head_count")
    n_head_kv = num("attention.head_count_kv") or n_head
    names = _gguf_names(arch, n_blocks)
    # an adapter is at most as large as the weights it adapts (in f32 twice the base's f16 size)
    tensors = read_safetensors(weights_path, limit=max(64 << 20, 4 * int(base.file_size)))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in tensors.items():
        m = _KEY.match(key)
        if m is None:
            what = "DoRA magnitudes" if "magnitude" in key else "LoRA on embeddings" if "embedding" in key \
                else "a bias" if key.endswith(".bias") else "a tensor that is not a LoRA A or B"
            raise AdapterError(f"{weights_path.name} holds {key!r} ({what}), which a GGUF LoRA adapter cannot carry",
                               hint="train LoRA on linear layers only (q/k/v/o and MLP projections)")
        pairs.setdefault(m["module"], {})[m["ab"]] = arr
    if not pairs:
        raise AdapterError(f"{weights_path} holds no LoRA tensors", hint="the adapter is empty: train it again")
    import gguf

    writer_tensors: list[tuple[str, np.ndarray]] = []
    ranks = set()
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{module} has lora_{'A' if 'A' in ab else 'B'} but not its pair",
                               hint="the adapter is damaged: save it again")
        a, b = ab["A"], ab["B"]
        name = _gguf_name(names, module)
        if name is None:
            raise AdapterError(f"the adapter's module {module!r} has no counterpart in a {arch} GGUF model",
                               hint="the adapter was trained for another architecture")
        shape = base.tensor_shapes.get(name)
        if shape is None:
            raise AdapterError(f"the base model has no tensor {name!r} (the adapter's {module})",
                               hint="the adapter was trained for another base model")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or len(shape) != 2 \
                or a.shape[1] != shape[0] or b.shape[0] != shape[1]:
            raise AdapterError(
                f"{module}: the adapter's shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit the base tensor "
                f"{name} of {shape[1] if len(shape) > 1 else '?'}x{shape[0]} ({base.path.name})",
                hint="the adapter was trained for another base model (or another size of it)")
        r = a.shape[0]
        ranks.add(r)
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg["lora_alpha"])
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        b = b * np.float32(scale)
        if arch in PERMUTED_QK and name.endswith((".attn_q.weight", ".attn_k.weight")):
            b = _permute_rows(b, n_head if ".attn_q." in name else n_head_kv)
        writer_tensors.append((name + ".lora_a", np.ascontiguousarray(a, dtype=np.float32)))
        writer_tensors.append((name + ".lora_b", np.ascontiguousarray(b, dtype=np.float32)))
    w = gguf.GGUFWriter(os.fspath(out), arch)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_string("general.name", folder.name[:200])
    for name, arr in writer_tensors:
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"modules": len(pairs), "ranks": sorted(ranks), "architecture": arch}
