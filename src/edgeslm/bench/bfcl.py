"""BFCL (Berkeley Function Calling Leaderboard) on the shared conformance sample: call validity,
AST accuracy per category, and time per question against llama-cpp-python's
``chatml-function-calling`` chat format.

Validity: every call edgeslm returns must name a provided function and its arguments must validate
against that function's schema (re-checked here with ``jsonschema``, independently of the SDK).
Accuracy follows BFCL's AST checker (see :func:`ast_match`); for a 135M model it is expected to be
low. Run ``python benchmarks/bfcl.py --per-category 10`` (or ``--limit 40 --passes auto`` for a
bounded auto-mode run).

Passes (greedy, parallel calls allowed in the parallel categories):

* ``edgeslm`` / ``peer``: ``tool_choice="auto"``, as BFCL asks, taking turns question by question
  (so drift in a shared machine's speed falls on both alike; the peer's child process is started
  for each question and warmed up with one short call, as edgeslm's model is, both outside the
  timed part). Caveat on time: the peer's auto mode
  first picks ``functions.<name>:`` or ``message:`` under a grammar, and its follow-up grammar for a
  message only allows ``<|im_end|>`` or a function name, so its text answers are empty, while
  edgeslm's are real text (up to ``--max-tokens``). Caveat on prompts: the peer's template lists the
  tools only inside a system message, and BFCL questions have none, so as run the peer's prompt
  carries no tool definitions at all. ``prompt_tokens`` therefore also reports both prompts with a
  system message (``You are a helpful assistant.``), where both carry the tools.
* ``edgeslm_named`` / ``peer_named``: ``tool_choice`` names the first ground-truth function, so both
  generate calls: the like-for-like speed comparison.
* ``edgeslm_required``: ``tool_choice="required"`` (a tiny model seldom calls on its own; this
  measures the validity of many more calls; irrelevance questions then get calls too).

Over ~450 lines on purpose: the BFCL corpus reader, the scorer and the peer runner of one benchmark
section.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .models import load_ref

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
PARALLEL = frozenset({"parallel", "parallel_multiple"})
SYSTEMS = ("edgeslm", "peer", "edgeslm_system", "peer_system", "edgeslm_named", "peer_named", "edgeslm_required")
_TYPE_MAP = {"dict": "object", "float": "number", "tuple": "array"}


def corpus_path() -> Path | None:
    """``shared/conformance/bfcl`` beside the project, if present."""
    for parent in Path(__file__).resolve().parents:
        p = parent / "shared" / "conformance" / "bfcl"
        if p.is_dir():
            return p
    return None


def to_json_schema(s: Any) -> Any:
    """BFCL's schema dialect to JSON Schema: ``dict``→object, ``float``→number, ``tuple``→array,
    ``any``→no type; BFCL-only keys (``optional``) dropped."""
    if isinstance(s, list):
        return [to_json_schema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out: dict[str, Any] = {}
    for k, v in s.items():
        if k == "optional":
            continue
        if k == "type":
            if v == "any":
                continue
            out[k] = _TYPE_MAP.get(v, v) if isinstance(v, str) else [_TYPE_MAP.get(x, x) for x in v]
        elif k == "properties" and isinstance(v, dict):
            out[k] = {name: to_json_schema(sub) for name, sub in v.items()}
        elif k in ("enum", "default", "required", "const", "examples"):
            out[k] = v
        else:
            out[k] = to_json_schema(v)
    return out


def tools_of(question: dict[str, Any]) -> list[dict[str, Any]]:
    """The question's functions as OpenAI tool dicts (JSON Schema parameters)."""
    return [
        {"type": "function", "function": {"name": f["name"], "description": f.get("description", ""),
                                          "parameters": to_json_schema(f.get("parameters") or {"type": "dict"})}}
        for f in question["function"]
    ]


def load(category: str, n: int | None = None, root: Path | None = None) -> list[dict[str, Any]]:
    """*n* questions of a category (a deterministic sample by hash of id), with ``ground_truth`` attached."""
    root = root or corpus_path()
    if root is None:
        raise FileNotFoundError("shared/conformance/bfcl not found")
    with open(root / f"BFCL_v4_{category}.json", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    answers: dict[str, Any] = {}
    ans_file = root / f"possible_answer_BFCL_v4_{category}.json"
    if ans_file.is_file():
        with open(ans_file, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    a = json.loads(line)
                    answers[a["id"]] = a["ground_truth"]
    for r in rows:
        r["ground_truth"] = answers.get(r["id"])
    rows.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    return rows[:n] if n is not None else rows


def messages_of(question: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(m) for m in question["question"][0]]


# ------------------------------------------------------------------------------------------ AST checker

_STRIP = re.compile(r"[ ,./\-_*^]")


def _norm_str(s: str) -> str:
    return _STRIP.sub("", s).lower().replace("'", '"')


def _type_ok(value: Any, schema: dict[str, Any]) -> bool:
    t = schema.get("type")
    if t is None or t == "any":
        return True
    if t == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t in ("array", "tuple"):
        if not isinstance(value, list):
            return False
        items = schema.get("items")
        return not isinstance(items, dict) or all(_type_ok(v, items) for v in value)
    if t == "dict":
        return isinstance(value, dict)
    return True


def _value_eq(value: Any, accepted: Any) -> bool:
    if isinstance(value, str) and isinstance(accepted, str):
        return _norm_str(value) == _norm_str(accepted)
    if isinstance(value, list) and isinstance(accepted, list):
        return len(value) == len(accepted) and all(_value_eq(v, a) for v, a in zip(value, accepted, strict=True))
    if isinstance(value, dict) and isinstance(accepted, dict):
        for k, v in value.items():
            if k not in accepted:
                return False
            options = accepted[k] if isinstance(accepted[k], list) else [accepted[k]]
            if not any(_value_eq(v, o) for o in options):
                return False
        return all(k in value or (isinstance(o, list) and "" in o) for k, o in accepted.items())
    if isinstance(value, bool) or isinstance(accepted, bool):
        return value is accepted
    if isinstance(value, (int, float)) and isinstance(accepted, (int, float)):
        return float(value) == float(accepted)
    return bool(value == accepted)


def call_matches(call: tuple[str, dict[str, Any]], gt: dict[str, Any], functions: list[dict[str, Any]]) -> bool:
    """One call against one ground-truth entry ``{fname: {param: [accepted...]}}``, as BFCL's AST checker."""
    name, args = call
    (gname, params), = gt.items()
    if name != gname:
        return False
    fdoc = next((f for f in functions if f["name"] == name), None)
    if fdoc is None:
        return False
    props = (fdoc.get("parameters") or {}).get("properties", {})
    required = (fdoc.get("parameters") or {}).get("required", [])
    if any(r not in args for r in required):
        return False
    for k, v in args.items():
        if k not in params or k not in props:
            return False  # unknown parameter
        if not _type_ok(v, props[k]):
            return False
        if not any(_value_eq(v, a) for a in params[k] if a != "" or v == ""):
            return False
    return all(k in args or "" in accepted for k, accepted in params.items())


def ast_match(category: str, calls: list[tuple[str, dict[str, Any]]], question: dict[str, Any]) -> bool:
    """Whether the calls answer the question (irrelevance: no call is right; parallel: any order)."""
    if category == "irrelevance":
        return not calls
    gt = question.get("ground_truth") or []
    if len(calls) != len(gt):
        return False
    functions = question["function"]
    if category not in PARALLEL:
        return call_matches(calls[0], gt[0], functions)
    return any(
        all(call_matches(c, g, functions) for c, g in zip(perm, gt, strict=True))
        for perm in itertools.permutations(calls)
    )


def valid_calls(calls: list[tuple[str, Any]], question: dict[str, Any]) -> int:
    """How many calls name a provided function and validate against its (JSON Schema) parameters."""
    from edgeslm.decoding.normalize import make_validator

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools_of(question)}
    ok = 0
    for name, args in calls:
        if name in schemas and isinstance(args, dict) and make_validator(schemas[name]).is_valid(args):
            ok += 1
    return ok


# ------------------------------------------------------------------------------------------ runners


def named_choice(question: dict[str, Any]) -> dict[str, Any] | None:
    """``tool_choice`` naming the function of the first ground-truth call (None without one)."""
    gt = question.get("ground_truth") or []
    if not gt:
        return None
    return {"type": "function", "function": {"name": next(iter(gt[0]))}}


def run_edgeslm(model: Any, questions: list[tuple[str, dict[str, Any]]], max_tokens: int = 256,
                tool_choice: str = "auto", system: bool = False) -> list[dict]:
    """Ask each question (greedy decoding); parallel calls allowed in the parallel categories;
    *system* puts :data:`SYSTEM` first."""
    import edgeslm

    out = []
    for cat, q in questions:
        t = time.perf_counter()
        error = None
        calls: list[tuple[str, dict[str, Any]]] = []
        n_prompt = n_out = None
        try:
            choice: Any = named_choice(q) if tool_choice == "named" else tool_choice
            msgs = [SYSTEM, *messages_of(q)] if system else messages_of(q)
            r = model.chat(msgs, tools=tools_of(q), tool_choice=choice,
                           parallel_tool_calls=cat in PARALLEL, temperature=0, max_tokens=max_tokens)
            calls = [(c.name, c.arguments) for c in r.tool_calls]
            n_prompt, n_out = r.usage.prompt_tokens, r.usage.completion_tokens
            if r.error is not None:  # a call cut off by max_tokens (auto)
                error = r.error.message
        except edgeslm.ToolCallError as exc:
            error = exc.message
        out.append({"id": q["id"], "category": cat, "calls": calls, "error": error, "time_s": time.perf_counter() - t,
                    "prompt_tokens": n_prompt, "completion_tokens": n_out})
    return out


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def edgeslm_prompt_tokens(model: Any, questions: list[tuple[str, dict[str, Any]]]) -> list[int]:
    """Prompt tokens of each question with its tools, after a :data:`SYSTEM` message (nothing generated)."""
    return [len(model.chat_prompt([SYSTEM, *messages_of(q)], tools=model_tools(q))) for _, q in questions]


def model_tools(question: dict[str, Any]) -> list[Any]:
    from ..tools import as_tools

    return as_tools(tools_of(question))


def _peer_worker(jobs: list[dict[str, Any]], q: Any, path: str, n_threads: int, max_tokens: int) -> None:
    from ._peer import peer_llama

    llm = peer_llama(path, n_ctx=4096, n_threads=n_threads, n_threads_batch=n_threads, verbose=False,
                          chat_format="chatml-function-calling")
    prompts: list[str] = []
    complete = llm.create_completion
    measure = False

    def spy(*args: Any, **kwargs: Any) -> Any:  # the prompts the chat handler evaluates
        prompts.append(kwargs["prompt"] if "prompt" in kwargs else args[0])
        if measure:  # only the prompt's size is wanted: stop before generating
            raise _Measured
        return complete(*args, **kwargs)

    llm.create_completion = spy  # type: ignore[method-assign]
    # Warm up as edgeslm is (outside the timed part): the first call of a process costs more. Without
    # tools: the peer's argument completions ignore max_tokens, so a warm-up call could run away.
    try:
        llm.create_chat_completion(messages=[{"role": "user", "content": "hi"}], temperature=0.0, max_tokens=8)
    except Exception:  # the peer's own errors are counted on the real questions
        pass
    for i, job in enumerate(jobs):
        prompts.clear()
        measure = bool(job.get("measure"))
        rename = {t["function"]["name"]: re.sub(r"[^A-Za-z0-9_-]", "_", t["function"]["name"]) for t in job["tools"]}
        back = {v: k for k, v in rename.items()}
        tools = [{"type": "function", "function": {**t["function"], "name": rename[t["function"]["name"]]}}
                 for t in job["tools"]]
        choice = job["tool_choice"]
        if isinstance(choice, dict):
            choice = {"type": "function", "function": {"name": rename[choice["function"]["name"]]}}
        t0 = time.perf_counter()
        calls: list[Any] = []
        malformed = 0
        n_out = None
        try:
            r = llm.create_chat_completion(messages=job["messages"], tools=tools, tool_choice=choice,
                                           temperature=0.0, max_tokens=max_tokens)
            n_out = (r.get("usage") or {}).get("completion_tokens")
            for c in r["choices"][0]["message"].get("tool_calls") or []:
                name = back.get(c["function"]["name"], c["function"]["name"])
                try:
                    calls.append((name, json.loads(c["function"]["arguments"])))
                except ValueError:
                    calls.append((name, None))
                    malformed += 1
            err = None
        except _Measured:
            err = None
        except Exception as exc:  # the peer's own errors count as failed questions
            err = f"{type(exc).__name__}: {exc}"[:200]
        dt = time.perf_counter() - t0
        first = prompts[0] if prompts and isinstance(prompts[0], str) else None
        n_prompt = len(llm.tokenize(first.encode("utf-8"), special=True)) if first is not None else None
        q.put((i, calls, err, dt, n_prompt, n_out))
    q.put(None)


class _Measured(Exception):
    pass


def run_peer(path: str, questions: list[tuple[str, dict[str, Any]]], n_threads: int = 2,
             max_tokens: int = 256, tool_choice: str = "auto", timeout_s: float = 120.0,
             system: bool = False, measure: bool = False) -> list[dict]:
    """The peer in a child process, restarted after a crash or a question that runs past *timeout_s*
    (its argument completions ignore ``max_tokens`` and can run to the end of the context); such a
    question counts as an error, with *timeout_s* as its time (a lower bound). ``prompt_tokens`` is
    the size of the first prompt it evaluates; *system* puts :data:`SYSTEM` first; with *measure*
    nothing is generated (only ``prompt_tokens`` is meaningful)."""
    from ._child import run_in_child

    jobs = [{"messages": [SYSTEM, *messages_of(q)] if system else messages_of(q), "tools": tools_of(q),
             "tool_choice": named_choice(q) if tool_choice == "named" else tool_choice, "measure": measure}
            for _, q in questions]
    results, failures = run_in_child(_peer_worker, (path, n_threads, max_tokens), jobs, timeout_s=timeout_s,
                                     first_extra_s=60.0)  # the first question of a child also loads the model
    res: dict[int, dict] = {i: {"calls": calls, "error": err, "time_s": dt, "prompt_tokens": n, "completion_tokens": m}
                            for i, (calls, err, dt, n, m) in results.items()}
    for i, why in failures.items():
        res[i] = {"calls": [], "error": why, "time_s": timeout_s if why == "timeout" else None, "prompt_tokens": None,
                  "completion_tokens": None}
    out = []
    for i, (cat, q) in enumerate(questions):
        r = res.get(i, {"calls": [], "error": "not run", "time_s": None})
        out.append({"id": q["id"], "category": cat, **r})
    return out


def _mean(values: list[Any]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def _summary(rows: list[dict], questions: dict[str, dict]) -> dict[str, Any]:
    by_cat: dict[str, Any] = {}
    for cat in CATEGORIES:
        rs = [r for r in rows if r["category"] == cat]
        if not rs:
            continue
        emitted = sum(len(r["calls"]) for r in rs)
        valid = sum(valid_calls(r["calls"], questions[r["id"]]) for r in rs)
        correct = sum(ast_match(cat, [c for c in r["calls"] if isinstance(c[1], dict)], questions[r["id"]])
                      and len([c for c in r["calls"] if not isinstance(c[1], dict)]) == 0 for r in rs)
        times = [r["time_s"] for r in rs if r["time_s"] is not None]
        by_cat[cat] = {
            "questions": len(rs),
            "with_calls": sum(1 for r in rs if r["calls"]),
            "calls": emitted,
            "valid_calls": valid,
            "validity": (valid / emitted) if emitted else None,
            "ast_matches": correct,
            "ast_accuracy": correct / len(rs),
            "errors": sum(1 for r in rs if r["error"]),
            "s_per_question": sum(times) / len(times) if times else None,
            "median_s": statistics.median(times) if times else None,
        }
    all_times = [r["time_s"] for r in rows if r["time_s"] is not None]
    emitted = sum(v["calls"] for v in by_cat.values())
    valid = sum(v["valid_calls"] for v in by_cat.values())
    return {"categories": by_cat, "questions": len(rows), "calls": emitted, "valid_calls": valid,
            "rows": [{k: r[k] for k in ("id", "calls", "error", "time_s", "prompt_tokens", "completion_tokens")
                      if k in r} for r in rows],
            "validity": valid / emitted if emitted else None,
            "with_calls": sum(v["with_calls"] for v in by_cat.values()),
            "ast_matches": sum(v["ast_matches"] for v in by_cat.values()),
            "prompt_tokens": _mean([r.get("prompt_tokens") for r in rows]),
            "completion_tokens": _mean([r.get("completion_tokens") for r in rows]),
            "s_per_question": sum(all_times) / len(all_times) if all_times else None,
            "median_s": statistics.median(all_times) if all_times else None,
            "errors": [{"id": r["id"], "error": r["error"]} for r in rows if r["error"]][:20]}


def bfcl_bench(model_ref: str = "smollm2-135m", *, per_category: int = 10, n_threads: int = 2,
               peer: bool = True, max_tokens: int = 256, passes: tuple[str, ...] = ("auto", "named", "required"),
               peer_timeout_s: float = 120.0, progress: Any = None, quick: bool = False) -> dict[str, Any]:
    """Run edgeslm (and the peer) on *per_category* questions of each category. *passes*: ``auto``
    (``tool_choice="auto"``, edgeslm and the peer taking turns by category, plus both prompts' sizes
    with a system message), ``named`` (the first expected function named, both), ``required``
    (edgeslm only: a tiny model seldom calls on its own, so this measures the validity of many more
    calls)."""
    import edgeslm

    from ..tools import FORMATS

    # --quick: one question of each of the first three categories
    cats = CATEGORIES[:3] if quick else CATEGORIES
    questions = [(cat, q) for cat in cats for q in load(cat, per_category)]
    by_id = {q["id"]: q for _, q in questions}
    model = load_ref(model_ref, n_ctx=4096, n_threads=n_threads)
    path = model.path
    try:  # warm up: tokenizer tables, grammar compiler
        model.chat([{"role": "user", "content": "hi"}], tools=tools_of(questions[0][1]), max_tokens=16)
    except edgeslm.ToolCallError:
        pass
    result: dict[str, Any] = {"model": model_ref, "per_category": per_category, "n_threads": n_threads,
                              "max_tokens": max_tokens}
    report = progress or (lambda r: None)
    named_qs = [(c, q) for c, q in questions if named_choice(q) is not None]
    try:
        if "auto" in passes:
            mine: list[dict] = []
            theirs: list[dict] = []
            if quick:  # one peer process for all questions (a process per question costs a model load each)
                mine += run_edgeslm(model, questions, max_tokens)
                if peer:
                    theirs += run_peer(path, questions, n_threads, max_tokens, timeout_s=peer_timeout_s)
            for i, item in enumerate([] if quick else questions):  # take turns question by question (who
                if peer and i % 2:      # goes first too), so drift in the machine's speed falls on both alike
                    theirs += run_peer(path, [item], n_threads, max_tokens, timeout_s=peer_timeout_s)
                mine += run_edgeslm(model, [item], max_tokens)
                if peer and not i % 2:
                    theirs += run_peer(path, [item], n_threads, max_tokens, timeout_s=peer_timeout_s)
            result["edgeslm"] = _summary(mine, by_id)
            sizes: dict[str, Any] = {"edgeslm": result["edgeslm"]["prompt_tokens"]}
            saved = model.tool_format
            try:  # the prompt in each format, on this model's tokenizer
                for fmt in (saved, *sorted(FORMATS.keys() - {saved})):
                    model.tool_format = fmt
                    sizes[f"edgeslm_with_system_{fmt}"] = _mean(edgeslm_prompt_tokens(model, questions))
            finally:
                model.tool_format = saved
            if peer:
                result["peer"] = {"name": "llama-cpp-python chatml-function-calling", **_summary(theirs, by_id)}
                sizes["peer"] = result["peer"]["prompt_tokens"]
                a, b = result["edgeslm"]["s_per_question"], result["peer"]["s_per_question"]
                result["time_ratio_auto"] = a / b if a and b else None
                # The same work: chatml-function-calling shows the tools only in a system message (without
                # one its prompt holds the question alone) and answers "message:" with no text at all,
                # so both are asked again with a system message first.
                result["edgeslm_system"] = _summary(run_edgeslm(model, questions, max_tokens, system=True), by_id)
                with_sys = run_peer(path, questions, n_threads, max_tokens, timeout_s=peer_timeout_s, system=True)
                result["peer_system"] = {"name": "llama-cpp-python chatml-function-calling, system message",
                                         **_summary(with_sys, by_id)}
                sizes["peer_with_system"] = _mean([r["prompt_tokens"] for r in with_sys])
                a, b = result["edgeslm_system"]["s_per_question"], result["peer_system"]["s_per_question"]
                result["time_ratio_auto_system"] = a / b if a and b else None
            result["prompt_tokens"] = sizes
            report(result)
        if "named" in passes:
            result["edgeslm_named"] = _summary(run_edgeslm(model, named_qs, max_tokens, tool_choice="named"), by_id)
            report(result)
            if peer:
                result["peer_named"] = _summary(run_peer(path, named_qs, n_threads, max_tokens, "named",
                                                         peer_timeout_s), by_id)
                a, b = result["edgeslm_named"]["s_per_question"], result["peer_named"]["s_per_question"]
                result["time_ratio_named"] = a / b if a and b else None
                report(result)
        if "required" in passes:
            result["edgeslm_required"] = _summary(run_edgeslm(model, questions, max_tokens, "required"), by_id)
            report(result)
    finally:
        model.close()
    return result


def table(result: dict[str, Any]) -> str:
    """A plain-text table of the result."""
    lines = [f"BFCL sample: {result['per_category']} per category, model {result['model']}",
             f"{'category':<18} {'system':<17} {'calls':>5} {'valid':>7} {'AST acc':>8} {'s/question':>10} "
             f"{'errors':>6}"]
    for cat in CATEGORIES:
        for sysname in SYSTEMS:
            s = result.get(sysname, {}).get("categories", {}).get(cat)
            if s is None:
                continue
            validity = "-" if s["validity"] is None else f"{100 * s['validity']:.0f}%"
            spq = "-" if s["s_per_question"] is None else f"{s['s_per_question']:.2f}"
            lines.append(f"{cat:<18} {sysname:<17} {s['calls']:>5} {validity:>7} {100 * s['ast_accuracy']:>7.0f}% "
                         f"{spq:>10} {s['errors']:>6}")
    for sysname in SYSTEMS:
        s = result.get(sysname)
        if s:
            v = "-" if s["validity"] is None else f"{100 * s['validity']:.1f}%"
            p = "-" if s.get("prompt_tokens") is None else f"{s['prompt_tokens']:.0f}"
            c = "-" if s.get("completion_tokens") is None else f"{s['completion_tokens']:.0f}"
            lines.append(f"{sysname}: {s['valid_calls']}/{s['calls']} valid calls ({v}) in {s['with_calls']} of "
                         f"{s['questions']} questions, {s['ast_matches']} AST matches, "
                         f"{s['s_per_question']:.2f} s/question, {p} prompt + {c} generated tokens")
    if result.get("prompt_tokens"):
        lines.append("mean prompt tokens: " + ", ".join(
            f"{k} {v:.0f}" for k, v in result["prompt_tokens"].items() if v is not None))
    for key in ("time_ratio_auto", "time_ratio_auto_system", "time_ratio_named"):
        if result.get(key) is not None:
            lines.append(f"time per question, edgeslm / peer ({key[11:]}): {result[key]:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-category", type=int, default=10)
    p.add_argument("--limit", type=int, default=None,
                   help="about this many questions in all, split evenly over the categories (overrides --per-category)")
    p.add_argument("--passes", nargs="+", default=["auto", "named", "required"], choices=["auto", "named", "required"])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--peer-timeout", type=float, default=120.0, help="seconds per peer question")
    p.add_argument("--json", default=None, help="also write the JSON result to this file")
    args = p.parse_args(argv)
    if corpus_path() is None:
        print("shared/conformance/bfcl not found", file=sys.stderr)
        return 2
    def progress(partial: dict[str, Any]) -> None:
        if args.json:
            Path(args.json + ".partial").write_text(json.dumps(partial, indent=2))

    per_category = max(1, args.limit // len(CATEGORIES)) if args.limit else args.per_category
    result = bfcl_bench(args.model, per_category=per_category, n_threads=args.threads, peer=not args.no_peer,
                        max_tokens=args.max_tokens, passes=tuple(args.passes), peer_timeout_s=args.peer_timeout,
                        progress=progress)
    print(table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
