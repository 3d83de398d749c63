"""Adapters given to ``edgeslm.load(base, adapters={...})``: checked against the base, and PEFT
folders converted once to GGUF LoRA, cached by content hash in the model store.

A GGUF LoRA is checked before llama.cpp opens it (a hostile or mismatched file never reaches the
engine): the header and tensor table (as for models), ``general.type = "adapter"``,
``adapter.type = "lora"``, the base's architecture, and for every pair of tensors that the base has
the tensor and that the shapes fit it. The error names both sides.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import AdapterError, CorruptModelError, EdgeSLMError, ModelNotFoundError

__all__ = ["AdapterSpec", "adapter_cache", "check_gguf_lora", "parse_adapters", "resolve_adapter"]

#: ggml tensor types llama.cpp's LoRA loader reads (F32, F16, Q8_0, BF16).
_LORA_TYPES = {0: "F32", 1: "F16", 8: "Q8_0", 30: "BF16"}


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter of ``load(adapters=...)``: its name, where it is, and its scale."""

    name: str
    source: Path
    scale: float = 1.0


def parse_adapters(adapters: Mapping[str, Any] | None) -> list[AdapterSpec]:
    """``{"name": path | (path, scale)}`` checked into :class:`AdapterSpec` (no file read yet)."""
    if adapters is None:
        return []
    if not isinstance(adapters, Mapping):
        raise AdapterError(f"adapters must be a dict of name -> path, not {type(adapters).__name__}",
                           hint='e.g. adapters={"tickets": "./tickets-lora"}')
    out = []
    for name, spec in adapters.items():
        if not isinstance(name, str) or not name or len(name) > 200:
            raise AdapterError(f"adapter names must be non-empty strings, not {name!r}",
                               hint='e.g. adapters={"tickets": "./tickets-lora"}')
        scale: Any = 1.0
        if isinstance(spec, tuple):
            if len(spec) != 2:
                raise AdapterError(f"adapter {name!r}: give a path or (path, scale), not {spec!r}",
                                   hint='e.g. ("./tickets-lora", 0.8)')
            spec, scale = spec
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise AdapterError(f"adapter {name!r}: the scale must be a finite number, not {scale!r}",
                               hint="1.0 applies the adapter as trained")
        if not isinstance(spec, (str, os.PathLike)):
            raise AdapterError(f"adapter {name!r}: a path is needed, not {type(spec).__name__}",
                               hint="pass the PEFT folder or the .gguf file of the adapter")
        out.append(AdapterSpec(name, Path(os.fspath(spec)).expanduser(), float(scale)))
    return out


def adapter_cache() -> Path:
    """Where converted adapters are kept: ``<model store>/adapters``."""
    from ..store.paths import cache_home

    d = cache_home() / "adapters"
    d.mkdir(parents=True, exist_ok=True)
    return d


def resolve_adapter(spec: AdapterSpec, base: Any) -> Path:
    """The checked GGUF LoRA file of *spec* for *base* (a ``GGUFInfo``): the file itself, the one
    ``.gguf`` of a folder, or a PEFT folder converted (once; cached by content hash)."""
    src = spec.source
    if src.is_dir():
        if (src / "adapter_config.json").exists():
            return _converted(src, base)
        ggufs = sorted(src.glob("*.gguf"))
        if len(ggufs) != 1:
            raise AdapterError(f"adapter {spec.name!r}: {src} holds neither a PEFT adapter (adapter_config.json) "
                               f"nor one .gguf file ({len(ggufs)} found)",
                               hint="pass the PEFT folder, or the GGUF LoRA file itself")
        src = ggufs[0]
    if not src.is_file():
        raise AdapterError(f"adapter {spec.name!r}: {src} does not exist",
                           hint="pass the PEFT folder or the .gguf file of the adapter")
    check_gguf_lora(src, base)
    return src


def check_gguf_lora(path: Path, base: Any) -> Any:
    """Check a GGUF LoRA against the base before llama.cpp reads it; returns its header."""
    from ..backends.gguf_file import validate_gguf

    try:
        info = validate_gguf(path)
    except (CorruptModelError, ModelNotFoundError) as exc:
        raise AdapterError(f"{path.name} is not a valid GGUF adapter: {exc.message}",
                           hint="convert or download the adapter again") from None
    meta = info.metadata
    kind, sub = meta.get("general.type"), meta.get("adapter.type")
    if kind != "adapter" or sub != "lora":
        raise AdapterError(f"{path.name} is not a LoRA adapter (general.type={kind!r}, adapter.type={sub!r})",
                           hint="pass a GGUF LoRA (convert_lora_to_gguf.py) or a PEFT folder")
    if info.architecture != base.architecture:
        raise AdapterError(f"{path.name} is a LoRA for the {info.architecture!r} architecture; the base "
                           f"{base.path.name} is {base.architecture!r}",
                           hint="use the adapter with the base model it was trained on")
    alpha = meta.get("adapter.lora.alpha", 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise AdapterError(f"{path.name}: adapter.lora.alpha is {alpha!r}", hint="convert the adapter again")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in info.tensor_shapes.items():
        if name.endswith((".lora_a", ".lora_b")):
            ttype = info.tensor_types.get(name)
            if ttype not in _LORA_TYPES:
                raise AdapterError(f"{path.name}: tensor {name} has ggml type {ttype}; LoRA tensors are "
                                   f"{'/'.join(_LORA_TYPES.values())}", hint="convert the adapter again")
            pairs.setdefault(name[:-7], {})[name[-1]] = shape
        else:
            raise AdapterError(f"{path.name}: tensor {name!r} is not a LoRA A or B",
                               hint="pass a GGUF LoRA adapter, not a model")
    if not pairs:
        raise AdapterError(f"{path.name} holds no LoRA tensors", hint="convert or train the adapter again")
    for target, ab in pairs.items():
        if set(ab) != {"a", "b"}:
            raise AdapterError(f"{path.name}: {target} lacks its lora_{'b' if 'a' in ab else 'a'}",
                               hint="the adapter is damaged: convert it again")
        shape = base.tensor_shapes.get(target)
        if shape is None:
            raise AdapterError(f"{path.name} adapts {target}, which the base {base.path.name} does not have",
                               hint="use the adapter with the base model it was trained on")
        a, b = ab["a"], ab["b"]
        if len(shape) < 2 or len(a) != 2 or len(b) != 2 or a[0] != shape[0] or b[1] != shape[1] or a[1] != b[0]:
            raise AdapterError(
                f"{path.name}: {target} is {shape[1] if len(shape) > 1 else '?'}x{shape[0]} in the base "
                f"{base.path.name}, but the adapter's A is {a[1]}x{a[0]} and B {b[1]}x{b[0]}",
                hint="the adapter was trained for another base model (or another size of it)")
    return info


def _hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _converted(folder: Path, base: Any) -> Path:
    """The cached GGUF conversion of a PEFT folder for this base (made now if missing)."""
    from ..store.files import file_lock
    from .convert import adapter_files, convert_peft

    files = list(adapter_files(folder))
    try:
        digest = _hash(files)
    except OSError as exc:
        raise AdapterError(f"cannot read the adapter in {folder}: {exc}", hint="check its permissions") from None
    shapes = hashlib.sha256(repr(sorted(base.tensor_shapes.items())).encode()).hexdigest()[:16]
    key = f"{digest[:32]}-{base.architecture}-{shapes}"
    cache = adapter_cache()
    out = cache / f"{key}.gguf"
    with file_lock(cache / f"{key}.lock"):
        if out.is_file():
            try:
                check_gguf_lora(out, base)
                return out
            except AdapterError:
                out.unlink(missing_ok=True)  # a damaged cache entry is made again
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{key}.", suffix=".part")
        os.close(fd)
        try:
            convert_peft(folder, base, Path(tmp))
            check_gguf_lora(Path(tmp), base)
            os.replace(tmp, out)
        except EdgeSLMError:
            raise
        except OSError as exc:
            raise AdapterError(f"cannot write the converted adapter to {cache}: {exc}",
                               hint="free disk space or set EDGESLM_HOME to a writable folder") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise AdapterError(f"the adapter in {folder} cannot be converted: {exc}",
                               hint="check that it is a PEFT LoRA adapter for this base model") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out
