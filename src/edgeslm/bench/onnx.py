"""ONNX rows beside the llama.cpp ones, for the same model: decode speed of edgeslm's loop over the
ONNX backend against onnxruntime-genai's own generator loop (same ``og.Model``, so the same session
and threads), and extraction latency on the same task items through both backends, item by item.

Where an ONNX variant comes from (:func:`find_onnx`), first match wins:

1. ``--onnx MODEL=FOLDER`` (or ``--onnx FOLDER`` for the first ``--model``);
2. a catalog ONNX variant for CPU that is already in the local cache (the bench never downloads);
3. for the bundled ``smollm2-135m``: the int4 export the test suite builds from the same GGUF
   (``tests/onnx_model.py``), in ``$EDGESLM_TEST_CACHE`` or ``~/.cache/edgeslm-test``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .models import load_ref

__all__ = ["find_onnx", "og_decode_tok_s", "onnx_bench", "onnx_decode_speed"]

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
OG_LOOP = "onnxruntime-genai generate loop"
_TEST_BUILDS = {"smollm2-135m": "onnx-smollm2-*"}  # tests/onnx_model.py's folder names


def _test_cache() -> Path:
    env = os.environ.get("EDGESLM_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeslm-test"


def find_onnx(model_ref: str, given: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    """``(folder, where it was found)`` of an ONNX GenAI variant of *model_ref*, or ``(None, why not)``."""
    if given and model_ref in given:
        p = Path(given[model_ref]).expanduser()
        if not (p / "genai_config.json").is_file():
            return None, f"--onnx {p}: no genai_config.json there"
        return p, f"--onnx {p}"
    from ..store.cache import cached_variant_path
    from ..store.catalog import get_entry

    try:
        entry = get_entry(model_ref)
    except Exception:
        return None, f"{model_ref} is not a catalog id and no --onnx folder was given for it"
    known = [v for v in entry.variants if v.format == "onnx" and v.device in ("cpu", "any")]
    for v in known:
        p = cached_variant_path(v)
        if p is not None:
            return p, f"catalog variant {v.label}, cached"
    pattern = _TEST_BUILDS.get(entry.id)
    if pattern:
        built = sorted((d for d in _test_cache().glob(pattern)
                        if (d / ".complete").is_file() and (d / "genai_config.json").is_file()),
                       key=lambda d: d.stat().st_mtime, reverse=True)
        if built:
            return built[0], f"int4 export of the same GGUF built by tests/onnx_model.py ({built[0]})"
    if known:
        return None, (f"{entry.id} has an ONNX variant ({known[0].label}) that is not downloaded: "
                      f"edgeslm pull {entry.id} --format onnx")
    return None, f"no ONNX variant of {entry.id} is available (none in the catalog or given with --onnx)"


def og_decode_tok_s(og: Any, og_model: Any, prompt: Sequence[int], n_tokens: int) -> tuple[float, int]:
    """onnxruntime-genai's own greedy loop (``append_tokens``, then ``generate_next_token`` +
    ``get_next_tokens`` per token): tokens/s from the first generated token to the last."""
    params = og.GeneratorParams(og_model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + n_tokens + 1)
    gen = og.Generator(og_model, params)
    gen.append_tokens(np.asarray(prompt, dtype=np.int32))
    n = 0
    t_first = None
    while n < n_tokens and not gen.is_done():
        gen.generate_next_token()
        gen.get_next_tokens()
        n += 1
        if t_first is None:
            t_first = time.perf_counter()
    dt = time.perf_counter() - (t_first or time.perf_counter())
    return ((n - 1) / dt if dt > 0 and n > 1 else 0.0), n


def onnx_decode_speed(model: Any, n_tokens: int = 128, reps: int = 5,
                      tick: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Greedy decode tokens/s, edgeslm over an ONNX model vs onnxruntime-genai on the same ``og.Model``,
    interleaved reps; medians and their ratio."""
    import onnxruntime_genai as og

    msgs = [{"role": "user", "content": PROMPT}]
    prompt = model.chat_prompt(msgs)
    og_model = model._engine.og_model  # same session: same threads and kernels
    ours: list[float] = []
    theirs: list[float] = []
    ttft: list[float] = []
    rate: list[float] = []
    counts: list[tuple[int, int]] = []
    for i in range(reps):
        model.generate("x", max_tokens=1)  # evict the cache so both start cold
        r = model.chat(msgs, max_tokens=n_tokens, temperature=0)
        ours.append(r.usage.decode_tokens_per_s)
        ttft.append(r.usage.time_to_first_token_s)
        if r.usage.time_to_first_token_s > 0:
            rate.append(r.usage.prompt_tokens / r.usage.time_to_first_token_s)
        tps, n = og_decode_tok_s(og, og_model, prompt, r.usage.completion_tokens)
        theirs.append(tps)
        counts.append((r.usage.completion_tokens, n))
        if tick:
            tick(i + 1)
    o, t = statistics.median(ours), statistics.median(theirs)
    return {
        "tokens": counts[0][0],
        "same_token_counts": all(a == b for a, b in counts),
        "edgeslm_tok_s": round(o, 1),
        "onnxruntime_genai_tok_s": round(t, 1),
        "edgeslm_runs": [round(x, 1) for x in ours],
        "onnxruntime_genai_runs": [round(x, 1) for x in theirs],
        "ratio": round(o / t, 3) if t else None,
        "edgeslm_ttft_s": round(statistics.median(ttft), 4) if ttft else None,
        "edgeslm_prompt_tok_s": round(statistics.median(rate), 1) if rate else None,
        "reps": reps,
    }


def _extract_row(model: Any, ex: Mapping[str, Any], max_tokens: int) -> dict[str, Any]:
    from .task import extract_row

    return extract_row(model, ex, max_tokens)


def onnx_bench(
    model_ref: str,
    folder: Path,
    examples: Sequence[Mapping[str, Any]],
    *,
    n_tokens: int = 128,
    reps: int = 5,
    n_threads: int = 2,
    max_tokens: int = 256,
    warmup: bool = True,
    tick: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Decode (edgeslm vs onnxruntime-genai on the ONNX folder) and extraction latency on *examples*
    through the ONNX and the llama.cpp variant of the same model, alternating item by item (which
    backend goes first alternates too), so drift in a shared machine's speed falls on both alike.
    With *warmup*, one untimed extraction per backend first: its one-off setup is not latency."""
    import edgeslm

    from .task import _summary

    t0 = time.perf_counter()
    onnx_model = edgeslm.load(folder, backend="onnx", n_ctx=4096, n_threads=n_threads)
    load_s = time.perf_counter() - t0
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if tick:
            tick(done)

    try:
        decode = onnx_decode_speed(onnx_model, n_tokens=n_tokens, reps=reps, tick=lambda _i: step())
        rows: dict[str, list[dict[str, Any]]] = {"onnx": [], "llama.cpp": []}
        if examples:
            llama_model = load_ref(model_ref, n_ctx=4096, n_threads=n_threads)
            try:
                for m in (onnx_model, llama_model) if warmup else ():  # first-call setup is not latency
                    _extract_row(m, examples[0], max_tokens)
                for i, ex in enumerate(examples):
                    order = (("onnx", onnx_model), ("llama.cpp", llama_model))
                    for backend, m in order if i % 2 == 0 else order[::-1]:
                        rows[backend].append(_extract_row(m, ex, max_tokens))
                    step()
            finally:
                llama_model.close()
    finally:
        onnx_model.close()
    return {
        "folder": str(folder), "load_s": round(load_s, 2), "decode": decode,
        "extract": {b: _summary(r) for b, r in rows.items() if r}, "rows": rows,
    }
