"""Extraction benchmarks on JSONSchemaBench: compliance, speed against llama-cpp-python's GBNF
``response_format`` path, grammar overhead per token, and prefix-reuse time to first token."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .models import load_ref

PROMPT = "Generate a realistic example object."


def corpus_path() -> Path | None:
    """``shared/conformance/jsonschemabench/schemas.jsonl`` beside the project, if present."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        p = parent / "shared" / "conformance" / "jsonschemabench" / "schemas.jsonl"
        if p.is_file():
            return p
    return None


def load_corpus(path: Path | None = None) -> list[dict[str, Any]]:
    p = path or corpus_path()
    if p is None:
        raise FileNotFoundError("shared/conformance/jsonschemabench/schemas.jsonl not found")
    with open(p, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sample(rows: list[dict[str, Any]], n: int, *, max_schema_chars: int = 3000) -> list[dict[str, Any]]:
    """A deterministic sample of *n* schemas (by hash of id) small enough to put in a prompt."""
    rows = [r for r in rows if len(json.dumps(r["schema"])) <= max_schema_chars]
    rows.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    return rows[:n]


def compliance(model: Any, rows: list[dict[str, Any]], *, max_tokens: int = 512) -> dict[str, Any]:
    """Extract under each schema; count valid / failed / refused / skipped, and re-validate.

    ``returned_invalid`` counts data that came back but does not validate: it must be 0.
    """
    import edgeslm
    from edgeslm.decoding.normalize import make_validator

    counts: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    tokens = 0
    for r in rows:
        schema = r["schema"]
        try:
            x = model.extract(PROMPT, schema, max_tokens=max_tokens, seed=0)
        except edgeslm.ContextLengthError:
            counts["skipped_context"] += 1
            continue
        except edgeslm.SchemaError as exc:
            counts["refused"] += 1
            failures.append({"id": r["id"], "kind": "refused", "why": exc.message[:200]})
            continue
        except edgeslm.ExtractionFailed as exc:
            counts["extraction_failed"] += 1
            failures.append({"id": r["id"], "kind": "failed", "why": exc.message[:200]})
            continue
        tokens += x.usage.completion_tokens
        errs = list(make_validator(schema).iter_errors(x.data))
        if errs:
            counts["returned_invalid"] += 1
            failures.append({"id": r["id"], "kind": "INVALID", "why": errs[0].message[:200]})
        else:
            counts["valid"] += 1
            counts[f"attempts_{x.attempts}"] += 1
    served = counts["valid"] + counts["extraction_failed"] + counts["returned_invalid"]
    return {
        "schemas": len(rows),
        **dict(counts),
        "served": served,
        "failed_rate": round(counts["extraction_failed"] / served, 4) if served else None,
        "wall_s": round(time.perf_counter() - t0, 2),
        "completion_tokens": tokens,
        "failures": failures,
    }


def _peer_extract(llm: Any, schema: dict[str, Any], system: str, max_tokens: int,
                  user: str = PROMPT) -> tuple[str, float]:
    t = time.perf_counter()
    r = llm.create_chat_completion(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        response_format={"type": "json_object", "schema": schema},
        temperature=0.0,
        max_tokens=max_tokens,
    )
    return r["choices"][0]["message"]["content"] or "", time.perf_counter() - t


def _peer_worker(jobs: list[tuple[Any, ...]], q: Any, path: str, n_threads: int, max_tokens: int) -> None:
    """Run the peer in a child process: its GBNF path can crash the process on some schemas. A job
    is ``(schema, system)`` (the user turn is the generic prompt) or ``(schema, system, user)``."""
    from ._peer import peer_llama

    llm = peer_llama(path, n_ctx=4096, n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
    for i, (schema, system, *user) in enumerate(jobs):
        text, dt = _peer_extract(llm, schema, system, max_tokens, *user)
        q.put((i, text, dt))
    q.put(None)


def peer_run(path: str, n_threads: int, jobs: list[tuple[Any, ...]], max_tokens: int) -> dict[int, Any]:
    """Results of the peer per job index, ``(text, seconds)``; a job that crashed or hung the
    child process (its GBNF path can crash on some schemas) is ``("<crash>", None)``."""
    from ._child import run_in_child

    results, failures = run_in_child(_peer_worker, (path, n_threads, max_tokens), jobs, timeout_s=300.0)
    return {**{i: ("<crash>", None) for i in failures}, **results}


def _ours_extract(model: Any, schema: Any, max_tokens: int) -> dict[str, Any]:
    import edgeslm
    from edgeslm.decoding.normalize import make_validator

    t = time.perf_counter()
    try:
        x = model.extract(PROMPT, schema, max_tokens=max_tokens, seed=0)
    except edgeslm.ExtractionFailed:
        return {"ok": False, "s": time.perf_counter() - t, "tokens": 0, "forced": 0, "ttft": None}
    dt = time.perf_counter() - t
    ok = not list(make_validator(schema).iter_errors(x.data))
    return {"ok": ok, "s": dt, "tokens": x.usage.completion_tokens, "forced": x.usage.forced_tokens,
            "ttft": x.usage.time_to_first_token_s}


def extraction_bench(
    model_ref: str = "smollm2-135m", *, quick: bool = False, n_threads: int = 2, block: int = 10,
    n: int | None = None, tick: Any = None,
) -> dict[str, Any]:
    """edgeslm extraction vs the llama-cpp-python GBNF peer on the same prompts and schemas."""
    import edgeslm
    from edgeslm.api.extract import extraction_messages, prepare_schema
    from edgeslm.decoding.normalize import make_validator

    rows = sample(load_corpus(), n or (30 if quick else 120))
    model = load_ref(model_ref, n_ctx=4096, n_threads=n_threads)
    max_tokens = 128 if quick else 256  # --quick: the peer's runaways (no JSON after 256 tokens) cost half
    ours: list[dict[str, Any]] = []
    jobs = []
    for r in rows:
        s = r["schema"]
        try:
            prepare_schema(s)
        except edgeslm.SchemaError:
            continue  # refused by edgeslm: not comparable
        system = extraction_messages(PROMPT, s)[0]["content"]
        jobs.append((s, system))
    # edgeslm and the peer take turns, a block of schemas each, so that drift in the machine's
    # speed (it is shared) falls on both alike
    peer: dict[int, Any] = {}
    for start in range(0, len(jobs), block):
        for s, _system in jobs[start : start + block]:
            ours.append(_ours_extract(model, s, max_tokens))
            if tick:
                tick(len(ours))
        done = peer_run(model.path, n_threads, jobs[start : start + block], max_tokens)
        peer.update({start + i: v for i, v in done.items()})
    # unconstrained: same prompts, same number of tokens, to isolate the grammar's cost
    ratio_unconstrained = []
    for (s, _system), o in zip(jobs, ours, strict=False):
        if not o["ok"] or o["tokens"] < 8:
            continue
        msgs = extraction_messages(PROMPT, s)
        model.generate("x", max_tokens=1)  # cold cache, as for the constrained run
        t = time.perf_counter()
        r = model.chat(msgs, max_tokens=o["tokens"], temperature=0)
        dt = time.perf_counter() - t
        if r.usage.completion_tokens == o["tokens"]:
            ratio_unconstrained.append(o["s"] / dt)
    peer_valid = peer_invalid = peer_notjson = peer_crash = 0
    peer_times = []
    peer_ok: set[int] = set()
    for i, (s, _system) in enumerate(jobs):
        text, dt = peer.get(i, ("<crash>", None))
        if text == "<crash>":
            peer_crash += 1
            continue
        peer_times.append(dt)
        try:
            v = json.loads(text)
        except ValueError:
            peer_notjson += 1
            continue
        if list(make_validator(s).iter_errors(v)):
            peer_invalid += 1
        else:
            peer_valid += 1
            peer_ok.add(i)
    # like for like: the schemas where both returned valid data
    both_ok = [i for i in sorted(peer_ok) if ours[i]["ok"]]
    ratio_both = sum(ours[i]["s"] for i in both_ok) / max(1e-9, sum(peer[i][1] for i in both_ok))
    ours_time = sum(o["s"] for o in ours)
    # compare wall time on the jobs both finished (the peer crashed on some)
    both = [i for i in range(len(jobs)) if peer.get(i, ("<crash>", None))[1] is not None]
    ratio_wall = sum(ours[i]["s"] for i in both) / max(1e-9, sum(peer[i][1] for i in both))
    t_parts = time.perf_counter()
    # --quick: fewer timed masks, compiles and prefix-reuse pairs (same figures, smaller samples)
    overhead = grammar_overhead(model, n=50 if quick else 200, compile_sample=20 if quick else 100,
                                other_vocab=not quick)
    t_overhead = time.perf_counter() - t_parts
    ttft = prefix_reuse(model, reps=1 if quick else 5)
    t_prefix = time.perf_counter() - t_parts - t_overhead
    model.close()
    return {
        "schemas": len(jobs),
        "edgeslm_valid": sum(o["ok"] for o in ours),
        "edgeslm_failed": sum(not o["ok"] for o in ours),
        "edgeslm_wall_s": round(ours_time, 2),
        "peer_valid": peer_valid, "peer_schema_invalid": peer_invalid, "peer_not_json": peer_notjson,
        "peer_crashes": peer_crash,
        "peer_wall_s": round(sum(peer_times), 2),
        "wall_ratio_edgeslm_over_peer": round(ratio_wall, 3),
        "both_valid": len(both_ok),
        "wall_ratio_where_both_valid": round(ratio_both, 3) if both_ok else None,
        "s_per_valid_edgeslm": round(ours_time / max(1, sum(o["ok"] for o in ours)), 3),
        "s_per_valid_peer": round(sum(peer_times) / max(1, peer_valid), 3),
        "forced_token_share": round(sum(o["forced"] for o in ours) / max(1, sum(o["tokens"] for o in ours)), 3),
        "constrained_over_unconstrained_p50": round(statistics.median(ratio_unconstrained), 3)
        if ratio_unconstrained else None,
        **overhead,
        **ttft,
        "part_seconds": {"grammar_overhead": round(t_overhead, 1), "prefix_reuse": round(t_prefix, 1)},
    }


def grammar_overhead(
    model: Any, n: int = 200, *, compile_sample: int = 100, other_vocab: bool = True
) -> dict[str, Any]:
    """Mask + sample cost per token (µs) for this model's vocabulary and (with *other_vocab*) for
    Gemma 3's 262k one; cold schema compile time over *compile_sample* JSONSchemaBench schemas."""
    import numpy as np

    from edgeslm.api.extract import prepare_schema
    from edgeslm.decoding.constrain import GrammarConstraint
    from edgeslm.decoding.sampling import Sampler, SamplingParams

    out: dict[str, Any] = {}
    schema = {"type": "object", "properties": {"notes": {"type": "string"}}, "required": ["notes"]}
    plan = prepare_schema(schema, max_string=100000)
    import edgeslm

    models = [("mask_us_per_token_" + model.name, model)]
    if other_vocab:
        try:
            models.append(("mask_us_per_token_gemma-3-270m", edgeslm.load("gemma-3-270m", n_ctx=512)))
        except edgeslm.EdgeSLMError:
            pass
    for key, m in models:
        eng = m._engine
        rng = np.random.default_rng(0)
        logits = rng.standard_normal(eng.n_vocab).astype(np.float32)
        c = GrammarConstraint(eng, plan.grammar)
        sampler = Sampler(SamplingParams())
        # enter the string value, then time free choices inside it
        for t in eng.tokenize('{"notes":"', special=False):
            c.consume(t)
        letters = [t for t in eng.tokenize(" the quick brown fox jumps over a lazy dog", special=False)]
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            x = logits.copy()  # the loop masks a copy: the engine's logits are a read-only view
            c.mask(x)
            sampler.choose(x)
            times.append(time.perf_counter() - t0)
            c.consume(letters[i % len(letters)])
        out[key] = round(statistics.median(times) * 1e6, 1)
        if m is not model:
            m.close()
    # cold compile: schema check + grammar + the matcher for this tokenizer, every cache cleared
    from edgeslm.decoding import constrain, grammar, support

    tok = constrain.constraints(model._engine).tokenizer
    comp = []
    for r in sample(load_corpus(), compile_sample):
        for cached in (support._check_cached, grammar._grammar_cached, support._pattern_ok, support._number_ok):
            cached.cache_clear()
        fresh = constrain.ConstraintCache.for_tokenizer(tok)  # no compiled grammar kept
        t0 = time.perf_counter()
        try:
            GrammarConstraint(fresh, prepare_schema(r["schema"]).grammar)
        except edgeslm.SchemaError:
            continue
        comp.append(time.perf_counter() - t0)
    if comp:
        comp.sort()
        out["schema_compile_ms_p50"] = round(statistics.median(comp) * 1000, 2)
        out["schema_compile_ms_p90"] = round(comp[int(len(comp) * 0.9)] * 1000, 2)
    return out


def prefix_reuse(model: Any, reps: int = 5) -> dict[str, Any]:
    """TTFT of the first and a second extraction that shares instructions and schema."""
    schema = {
        "type": "object",
        "properties": {
            "customer": {"type": "string"}, "product": {"type": "string"},
            "severity": {"enum": ["low", "medium", "high", "critical"]},
            "summary": {"type": "string", "maxLength": 120},
        },
        "required": ["customer", "product", "severity", "summary"],
    }
    instructions = "You triage support tickets for ACME Corp. " * 20
    firsts, seconds = [], []
    for i in range(reps):
        model.generate(f"evict {i}", max_tokens=1)
        a = model.extract(f"Ticket {i}: Bob says the router X{i} reboots hourly.", schema,
                          instructions=instructions, max_tokens=64)
        b = model.extract(f"Ticket {i}b: Ann cannot log in to the portal.", schema,
                          instructions=instructions, max_tokens=64)
        firsts.append(a.usage.time_to_first_token_s)
        seconds.append(b.usage.time_to_first_token_s)
    return {
        "ttft_first_ms": round(statistics.median(firsts) * 1000, 1),
        "ttft_second_ms": round(statistics.median(seconds) * 1000, 1),
        "ttft_second_over_first": round(statistics.median(seconds) / statistics.median(firsts), 3),
    }
