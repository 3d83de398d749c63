"""High-volume extraction: many documents with one schema through ``Model.extract_many`` (several sequences
per engine call), beside edgeslm's own ``extract`` one document at a time and the llama-cpp-python
``response_format`` peer one at a time, on the same documents in the same run.

The figure is valid extractions per second of wall time (``extract_many`` at the fastest size, and
``batch_size=None`` as an app calls it: first items measured one at a time, then its own choice); the
greedy agreement of the batched results with the one-at-a-time ones and the engine's own batching gain
(tokens per second of one decode step of the whole batch over that of one sequence) are reported beside
it, with the bound batching cannot pass on this machine: the one-at-a-time time over the time the same
tokens take at the engine's best batched rates (see :func:`engine_rates`). With ``batch_invariant=True``
(``invariant``): how many of the first documents come out the same both ways, and what the mode costs
one at a time, against the default run on the same documents.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .models import load_ref

__all__ = ["batch_bench", "batch_documents", "engine_rates"]


def batch_documents(n: int, task: str = "contacts") -> tuple[Any, list[dict[str, Any]]]:
    """*n* documents of one labeled task in ``benchmarks/labeled`` (cycled when it has fewer)."""
    from .labeled import load_task

    schema, rows = load_task(task)
    return schema, [rows[i % len(rows)] for i in range(n)]


def engine_rates(engine: Any, n: int, per_seq: int | None = None) -> tuple[float, float]:
    """The engine at its most efficient for *n* sequences, in tokens per second: prompt tokens (one
    call of *per_seq* tokens for each sequence, by default 64, or 512 in all past 8 sequences,
    logits for the last ones only; best of two after a warm-up, on a context forked for it) and
    generated tokens (one decode step of the *n* sequences, every token with logits:
    :func:`~edgeslm.runtime.batching.decode_step_seconds`). Both on a short context, so attention over a
    long context is not counted."""
    from edgeslm.runtime.batching import decode_step_seconds

    per_seq = per_seq or max(1, min(64, 512 // n))
    tok = engine.bos_id if engine.bos_id is not None else 0
    fork = engine.fork(n, n * per_seq)
    try:
        best = float("inf")
        for i in range(3):
            for s in range(n):
                fork.seq_trim(s, 0)
            t = time.perf_counter()
            fork.eval_many([(s, [tok] * per_seq) for s in range(n)])
            if i:  # the first is the warm-up
                best = min(best, time.perf_counter() - t)
    finally:
        fork.close()
    return n * per_seq / best, n / decode_step_seconds(engine, n)[1]


def _invariant_run(model_ref: str, schema: Any, texts: list[str], n_threads: int, batch_size: int,
                   max_tokens: int) -> dict[str, Any]:
    """*texts* one at a time and through ``extract_many`` with ``batch_invariant=True``: how many
    results are the same, and the seconds of each run."""
    import edgeslm

    model = load_ref(model_ref, n_ctx=2048, n_threads=n_threads, batch_invariant=True)
    try:
        model.extract(texts[0], schema, max_tokens=max_tokens)  # warm, as the default run was
        t = time.perf_counter()
        one = [model.extract_many([x], schema, batch_size=1, max_tokens=max_tokens)[0] for x in texts]
        one_s = time.perf_counter() - t
        t = time.perf_counter()
        many = model.extract_many(texts, schema, batch_size=batch_size, max_tokens=max_tokens)
        many_s = time.perf_counter() - t
    finally:
        model.close()
    same = sum(isinstance(a, edgeslm.Extraction) and isinstance(b, edgeslm.Extraction) and a.raw == b.raw
               for a, b in zip(one, many, strict=True))
    return {"documents": len(texts), "greedy_same": same, "one_s": one_s, "many_s": round(many_s, 3)}


def _token_counts(results: list[Any]) -> tuple[int, int]:
    """``(prompt, generated)`` tokens the engine evaluated for *results*: prompt tokens not reused
    from the cache plus the tokens the grammar forced (no logits needed), and the tokens the model
    chose (each one decode step with logits)."""
    done = [x.usage for x in results if hasattr(x, "usage")]
    chosen = sum(u.completion_tokens - u.forced_tokens for u in done)
    return sum(u.prompt_tokens - u.reused_prompt_tokens + u.forced_tokens for u in done), chosen


def batch_bench(model_ref: str, schema: Any, rows: list[dict[str, Any]], *, n_threads: int = 2, peer: bool = True,
                batch_size: int | None = None, max_tokens: int = 256, invariant_docs: int = 16,
                tick: Callable[[int], None] | None = None) -> dict[str, Any]:
    """valid/s of ``extract_many`` (``batch_size`` sequences; ``None``: the size where the engine
    decodes fastest within what memory allows, :func:`~edgeslm.runtime.batching.best_batch_size`, which
    ``batch_size=None`` takes where batching pays), of ``extract`` one at a time and of the peer
    one at a time, on *rows* (``text`` and ``expected``); then both again with
    ``batch_invariant=True`` on the first *invariant_docs* rows (0: not measured)."""
    import edgeslm
    from edgeslm.runtime.batching import batch_cap, best_batch_size, chosen_batch_size, decode_gain

    from .extract import peer_run
    from .task import peer_job, peer_row, score

    texts = [r["text"] for r in rows]
    model = load_ref(model_ref, n_ctx=2048, n_threads=n_threads)
    done = 0

    def step(k: int = 1) -> None:
        nonlocal done
        done += k
        if tick:
            tick(done)

    def summary(results: list[Any], seconds: float) -> dict[str, Any]:
        ok = [(x, r) for x, r in zip(results, rows, strict=True) if isinstance(x, edgeslm.Extraction)]
        right = sum(score(x.data, r["expected"])[0] for x, r in ok)
        return {"items": len(rows), "valid": len(ok), "valid_rate": len(ok) / len(rows), "accuracy": right / len(rows),
                "seconds": round(seconds, 3), "valid_per_s": len(ok) / seconds if seconds else None,
                "s_per_item": seconds / len(rows)}

    try:
        path = model.path
        model.extract(texts[0], schema, max_tokens=max_tokens)  # tokenizer, grammar, prompt prefix: warm for both
        if batch_size is None:
            batch_size = best_batch_size(model._engine, batch_cap(model._engine, model.n_ctx, len(texts)))[0]
        gain = decode_gain(model._engine, batch_size) if batch_size > 1 else 1.0
        auto = chosen_batch_size(model._engine, model.n_ctx, total=len(texts))  # what batch_size=None decides here
        one: list[Any] = []
        each: list[float] = []
        for text in texts:
            t = time.perf_counter()
            try:
                one.append(model.extract(text, schema, max_tokens=max_tokens))
            except edgeslm.EdgeSLMError as exc:
                one.append(exc)
            each.append(time.perf_counter() - t)
            step()
        one_s = sum(each)
        rates = engine_rates(model._engine, batch_size)
        t = time.perf_counter()
        many: list[Any] = [None] * len(texts)
        for i, x in model.extract_iter(texts, schema, batch_size=batch_size, max_tokens=max_tokens):
            many[i] = x  # in finishing order: put back in input order
            step()
        many_s = time.perf_counter() - t
        # batch_size=None as an app would call it: first items measured one at a time, then its choice
        engine = model._engine
        real_fork, forked = engine.fork, []
        engine.fork = lambda n, c: (forked.append(n), real_fork(n, c))[1]  # type: ignore[method-assign]
        try:
            t = time.perf_counter()
            auto_run: list[Any] = [None] * len(texts)
            for i, x in model.extract_iter(texts, schema, batch_size=None, max_tokens=max_tokens):
                auto_run[i] = x
            auto_s = time.perf_counter() - t
        finally:
            del engine.fork
    finally:
        model.close()
    k = min(invariant_docs, len(texts))
    invariant = _invariant_run(model_ref, schema, texts[:k], n_threads, batch_size, max_tokens) if k else None
    same = sum(isinstance(a, edgeslm.Extraction) and isinstance(b, edgeslm.Extraction) and a.data == b.data
               for a, b in zip(one, many, strict=True))
    out: dict[str, Any] = {"model": model_ref, "documents": len(rows), "batch_size": batch_size,
                           "decode_gain": round(gain, 3), "greedy_same": same, "auto_batch_size": auto}
    prompt_tokens, chosen = _token_counts(one)
    ideal_s = prompt_tokens / rates[0] + chosen / rates[1]
    # the most batching could give here: each token of the one-at-a-time run at the engine's best
    # batched rate (prompt and forced tokens in a large batch, chosen ones in a decode step of the batch)
    out["bound"] = round(one_s / ideal_s, 3) if ideal_s else None
    out["engine_tok_s"] = {"prompt": round(rates[0], 1), "step": round(rates[1], 1)}
    out["tokens"] = {"prompt": prompt_tokens, "chosen": chosen}
    out["one_at_a_time"] = summary(one, one_s)
    out["extract_many"] = summary(many, many_s)
    out["auto"] = summary(auto_run, auto_s)
    out["auto"]["batched"] = max(forked, default=1)  # sequences it decoded together (1: one at a time)
    out["auto"]["ratio_to_one_at_a_time"] = round(one_s / auto_s, 3) if auto_s else None
    if invariant is not None:  # its one-at-a-time time against the default run's on the same documents
        inv_one = invariant.pop("one_s")
        invariant["cost_one_at_a_time"] = round(inv_one / max(1e-9, sum(each[:k])), 3)
        invariant["ratio"] = round(inv_one / max(1e-9, invariant["many_s"]), 3)
        out["invariant"] = invariant
    if peer:
        got = peer_run(path, n_threads, [peer_job(text, schema) for text in texts], max_tokens)
        scored = [peer_row({"id": i, "schema": schema, "expected": r["expected"]}, *got.get(i, ("<crash>", None)))
                  for i, r in enumerate(rows)]
        valid = sum(x["valid"] for x in scored)
        right = sum(x["exact"] for x in scored)
        seconds = sum(x["s"] or 0.0 for x in scored)
        out["peer"] = {"items": len(rows), "valid": valid, "valid_rate": valid / len(rows),
                       "accuracy": right / len(rows), "seconds": round(seconds, 3),
                       "valid_per_s": valid / seconds if seconds else None, "s_per_item": seconds / len(rows)}
    return out
