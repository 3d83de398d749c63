"""Decode speed of edgeslm's loop over the ONNX backend against onnxruntime-genai's own generate loop.

Same model object (same ONNX Runtime session and threads), same prompt tokens, same number of greedy
tokens; the two are measured in interleaved repetitions and the medians are reported with their ratio.
Time runs from the first generated token to the last (prompt processing excluded).

Usage: ``python benchmarks/onnx_speed.py [--tokens 128] [--reps 5] [--model FOLDER]``
(without ``--model``, the SmolLM2 ONNX test model is built or taken from the test cache).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def _og_tokens_per_s(og: Any, og_model: Any, prompt: list[int], n_tokens: int) -> tuple[float, int]:
    """onnxruntime-genai's own greedy loop: ``generate_next_token`` + ``get_next_tokens`` per token."""
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


def onnx_decode_speed(folder: Path, n_tokens: int = 128, reps: int = 5) -> dict[str, Any]:
    """Greedy decode tokens/s, edgeslm vs onnxruntime-genai, interleaved reps; medians and ratio."""
    import onnxruntime_genai as og

    import edgeslm

    model = edgeslm.load(folder, backend="onnx", n_ctx=2048)
    msgs = [{"role": "user", "content": PROMPT}]
    prompt = model.chat_prompt(msgs)
    og_model = model._engine.og_model  # same session: same threads and kernels
    ours: list[float] = []
    theirs: list[float] = []
    counts: list[tuple[int, int]] = []
    for _ in range(reps):
        model.generate("x", max_tokens=1)  # evict the cache so both start cold
        r = model.chat(msgs, max_tokens=n_tokens, temperature=0)
        ours.append(r.usage.decode_tokens_per_s)
        tps, n = _og_tokens_per_s(og, og_model, prompt, r.usage.completion_tokens)
        theirs.append(tps)
        counts.append((r.usage.completion_tokens, n))
    model.close()
    o, t = statistics.median(ours), statistics.median(theirs)
    return {
        "model": str(folder),
        "tokens": counts[0][0],
        "same_token_counts": all(a == b for a, b in counts),
        "edgeslm_tok_s": round(o, 1),
        "onnxruntime_genai_tok_s": round(t, 1),
        "edgeslm_runs": [round(x, 1) for x in ours],
        "onnxruntime_genai_runs": [round(x, 1) for x in theirs],
        "ratio": round(o / t, 3) if t else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=None, help="an ONNX GenAI folder (default: the SmolLM2 test model)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    folder = args.model
    if folder is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.onnx_model import smollm2_onnx

        folder = smollm2_onnx()
    print(json.dumps(onnx_decode_speed(folder, args.tokens, args.reps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
