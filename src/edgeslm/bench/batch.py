"""High-volume extraction: many documents with one schema through ``Model.extract_many`` (several
sequences per engine call), beside edgeslm's own ``extract`` one document at a time and the
llama-cpp-python ``response_format`` peer one at a time, on the same documents in the same run.

The figure is valid extractions per second of wall time; the greedy agreement of the batched
results with the one-at-a-time ones and the engine's own batching gain (tokens per second of one
decode step of the whole batch over that of one sequence) are reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["batch_bench", "batch_documents"]


def batch_documents(n: int, task: str = "contacts") -> tuple[Any, list[dict[str, Any]]]:
    """*n* documents of one labeled task in ``benchmarks/labeled`` (cycled when it has fewer)."""
    from .labeled import load_task

    schema, rows = load_task(task)
    return schema, [rows[i % len(rows)] for i in range(n)]


def batch_bench(model_ref: str, schema: Any, rows: list[dict[str, Any]], *, n_threads: int = 2, peer: bool = True,
                batch_size: int = 8, max_tokens: int = 256,
                tick: Callable[[int], None] | None = None) -> dict[str, Any]:
    """valid/s of ``extract_many`` (``batch_size`` sequences), of ``extract`` one at a time and of
    the peer one at a time, on *rows* (``text`` and ``expected``)."""
    import edgeslm
    from edgeslm.api.batch import decode_gain

    from .extract import peer_run
    from .task import peer_job, peer_row, score

    texts = [r["text"] for r in rows]
    model = edgeslm.load(model_ref, n_ctx=2048, n_threads=n_threads)
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
        gain = decode_gain(model._engine, batch_size)
        one: list[Any] = []
        t = time.perf_counter()
        for text in texts:
            try:
                one.append(model.extract(text, schema, max_tokens=max_tokens))
            except edgeslm.EdgeSLMError as exc:
                one.append(exc)
            step()
        one_s = time.perf_counter() - t
        t = time.perf_counter()
        many: list[Any] = [None] * len(texts)
        for i, x in model.extract_iter(texts, schema, batch_size=batch_size, max_tokens=max_tokens):
            many[i] = x  # in finishing order: put back in input order
            step()
        many_s = time.perf_counter() - t
    finally:
        model.close()
    same = sum(isinstance(a, edgeslm.Extraction) and isinstance(b, edgeslm.Extraction) and a.data == b.data
               for a, b in zip(one, many, strict=True))
    out: dict[str, Any] = {"model": model_ref, "documents": len(rows), "batch_size": batch_size,
                           "decode_gain": round(gain, 3), "greedy_same": same}
    out["one_at_a_time"] = summary(one, one_s)
    out["extract_many"] = summary(many, many_s)
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
