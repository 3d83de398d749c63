"""Decode speed of edgeslm's loop against llama-cpp-python's own ``Llama.generate``."""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

from .models import load_ref

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def decode_speed(
    model_ref: str = "smollm2-135m", n_tokens: int = 128, reps: int = 3, n_threads: int = 2,
    tick: Any = None,
) -> dict[str, Any]:
    """Greedy decode tokens/s, edgeslm vs ``Llama.generate``, same model/threads, interleaved reps."""

    from ._peer import peer_llama

    model = load_ref(model_ref, n_threads=n_threads, n_ctx=2048)
    prompt = model.chat_prompt([{"role": "user", "content": PROMPT}])
    llm = peer_llama(model.path, n_ctx=2048, n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
    ours, theirs, ttft, prompt_rate = [], [], [], []
    for _ in range(reps):
        # edgeslm: time from the first token to the last (prompt processing excluded)
        model.generate("x", max_tokens=1)  # evict the cache so both start cold
        r = model.chat([{"role": "user", "content": PROMPT}], max_tokens=n_tokens, temperature=0)
        ours.append(r.usage.decode_tokens_per_s)
        ttft.append(r.usage.time_to_first_token_s)
        if r.usage.time_to_first_token_s > 0:
            prompt_rate.append(r.usage.prompt_tokens / r.usage.time_to_first_token_s)
        # llama-cpp-python
        t_first = None
        n = 0
        for _tok in itertools.islice(
            llm.generate(prompt, temp=0, top_k=1, repeat_penalty=1.0, reset=True), r.usage.completion_tokens
        ):
            n += 1
            if t_first is None:
                t_first = time.perf_counter()
        dt = time.perf_counter() - (t_first or time.perf_counter())
        theirs.append((n - 1) / dt if dt > 0 else 0.0)
        if tick:
            tick(len(ours))
    model.close()
    o, t = statistics.median(ours), statistics.median(theirs)
    return {
        "model": model_ref,
        "threads": n_threads,
        "tokens": n_tokens,
        "edgeslm_tok_s": round(o, 1),
        "llama_cpp_python_tok_s": round(t, 1),
        "ratio": round(o / t, 3) if t else None,
        "edgeslm_ttft_s": round(statistics.median(ttft), 4) if ttft else None,
        "edgeslm_prompt_tok_s": round(statistics.median(prompt_rate), 1) if prompt_rate else None,
        "reps": reps,
    }
