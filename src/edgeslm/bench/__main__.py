"""``python -m edgeslm.bench``: speed, extraction, tool calls and your own task, each beside a
baseline measured in the same run (llama-cpp-python on the same model and threads), as tables.

    python -m edgeslm.bench --quick                       # every section, small samples
    python -m edgeslm.bench --model smollm2-135m --model my-q8.gguf --task my_task.jsonl
    python -m edgeslm.bench --markdown report.md --json report.json --plot charts/
    python -m edgeslm.bench --only task --cloud-url http://127.0.0.1:8000/v1 --cloud-model big-model

Over ~450 lines on purpose: the bench's command line: every section's options and their dispatch in
one parser.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

SECTIONS = ("speed", "extract", "bfcl", "task", "batch", "onnx", "startup", "contention", "serve", "confidence")
#: Sections a run without --only leaves out (long: ask for them by name).
OPT_IN = ("confidence",)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 140)


def _default_task(quick: bool) -> tuple[list[Any], str | None]:
    """A sample of the labeled set shipped in benchmarks/ (when running from a checkout)."""
    try:
        from .labeled import load_task as load_labeled
        from .labeled import tasks as task_names
    except ImportError:
        return [], None
    from .task import TaskExample

    examples: list[Any] = []
    per = 2 if quick else 10
    try:
        for name in task_names():
            schema, rows = load_labeled(name)
            for row in rows[:per]:
                examples.append(TaskExample(id=f"{name}/{row['id']}", text=row["text"], schema=schema,
                                            expected=row["expected"]))
    except Exception as exc:  # the labeled set is optional (it ships with the repository, not the wheel)
        return [], f"labeled set not available: {exc}"
    return examples, "labeled set in benchmarks/labeled"


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not 1 or more")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgeslm.bench", description=__doc__.split("\nOver ~450 lines")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=None,
                   help="catalog id or file path; repeat to compare models or quantizations side by side; "
                        "BASE+adapter:DIR[@SCALE] is BASE with a LoRA adapter (PEFT folder or GGUF)")
    p.add_argument("--quick", action="store_true", help="every section on small samples (about 2 minutes on 2 cores)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, choices=SECTIONS,
                   help=f"sections to run (default: all but {', '.join(OPT_IN)}, which take minutes per model)")
    p.add_argument("--task", default=None,
                   help="your task: JSON Lines of {text, schema, expected[, id]}; a line that is not such an object, "
                        "or whose schema edgeslm cannot serve, is skipped with a note naming it (on stderr and in the "
                        "report); a file that cannot be read or has no usable line stops before any model loads "
                        "(exit status 2)")
    p.add_argument("--limit", type=int, default=None, help="at most this many items per section")
    p.add_argument("--no-peer", action="store_true", help="skip the llama-cpp-python baseline")
    p.add_argument("--bfcl-passes", nargs="+", default=None, choices=["auto", "named", "required"],
                   help="bfcl: tool_choice passes to run (default: auto; all three without --quick)")
    p.add_argument("--batch-size", type=_positive, default=None,
                   help="batch: sequences decoded together (default: the fastest size that fits in memory)")
    p.add_argument("--batch-task", default="contacts", help="batch: the labeled task whose documents are used")
    p.add_argument("--serve-clients", type=_positive, default=8,
                   help="serve: concurrent clients against `edgeslm serve` (the issue's load test: 32)")
    p.add_argument("--serve-seconds", type=_positive, default=None,
                   help="serve: seconds of load per server (default 20, 5 with --quick; the issue's: 60)")
    p.add_argument("--serve-batch-size", type=_positive, default=None,
                   help="serve: the server's --batch-size (default: its own choice)")
    p.add_argument("--requests-per-day", type=int, default=None, help="cost view: daily volume")
    p.add_argument("--device-cost", type=float, default=None, help="cost view: price of this device, USD")
    p.add_argument("--gpu-server-hourly", type=float, default=None, help="cost view: rented GPU server, USD/h")
    p.add_argument("--api-price", type=float, nargs=2, default=None, metavar=("IN", "OUT"),
                   help="cost view: frontier API USD per million input and output tokens")
    p.add_argument("--escalation-budget", type=float, default=None, metavar="SHARE",
                   help="escalation view: the share the calibrated threshold is fitted for (default 0.05)")
    p.add_argument("--cloud-accuracy", type=float, default=None, metavar="P",
                   help="escalation view: assumed chance the cloud model is right on an escalated item "
                        "(default 1.0; not used with --cloud-url)")
    p.add_argument("--cloud-url", default=None,
                   help="escalation view: ask this OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) "
                        "for the escalated items instead of assuming")
    p.add_argument("--cloud-model", default=None, help="the model name to ask at --cloud-url")
    p.add_argument("--cloud-api-key-env", default=None, metavar="VAR",
                   help="the environment variable holding the key for --cloud-url (none is sent otherwise)")
    p.add_argument("--cloud-timeout", type=float, default=30.0, help="seconds per cloud request (default 30)")
    p.add_argument("--onnx", action="append", default=None, metavar="[MODEL=]FOLDER",
                   help="an ONNX GenAI folder of the same model, for the onnx section (bare FOLDER: the first "
                        "--model); without it a cached catalog ONNX variant is used when there is one")
    p.add_argument("--json", default=None, help="write the machine-readable record here")
    p.add_argument("--markdown", default=None, help="write the tables as Markdown here")
    p.add_argument("--plot", default=None, metavar="DIR",
                   help='write PNG charts here (needs matplotlib: pip install "edgeslm[plot]")')
    return p


def _check(args: argparse.Namespace, models: list[str]) -> dict[str, str]:
    """Refuse bad option combinations before anything runs; the --onnx folders by model."""
    from .._errors import InvalidRequestError

    for name in ("escalation_budget", "cloud_accuracy"):
        v = getattr(args, name)
        if v is not None and not 0.0 <= v <= 1.0:
            flag = "--" + name.replace("_", "-")
            raise InvalidRequestError(f"{flag} must be a share within [0, 1], not {v}", hint=f"e.g. {flag} 0.05")
    if bool(args.cloud_url) != bool(args.cloud_model):
        raise InvalidRequestError("--cloud-url and --cloud-model go together",
                                  hint="e.g. --cloud-url http://127.0.0.1:8000/v1 --cloud-model qwen2.5-7b")
    if args.cloud_url and args.cloud_accuracy is not None:
        raise InvalidRequestError("--cloud-accuracy is an assumption; with --cloud-url the cloud's answers are "
                                  "measured instead", hint="drop one of the two")
    if args.cloud_api_key_env and args.cloud_api_key_env not in os.environ:
        raise InvalidRequestError(f"--cloud-api-key-env: ${args.cloud_api_key_env} is not set",
                                  hint=f"export {args.cloud_api_key_env}=... first")
    if args.cloud_url:
        from ..escalation.targets import OpenAICompatible

        OpenAICompatible(args.cloud_url, args.cloud_model)  # checks the URL and that openai is installed
    if args.plot:
        from .plot import require_matplotlib

        require_matplotlib()
    given: dict[str, str] = {}
    for item in args.onnx or []:
        model, sep, folder = item.partition("=")
        if not sep:
            model, folder = models[0], item
        if model not in models:
            raise InvalidRequestError(f"--onnx {item}: {model} is not one of the --model values",
                                      hint=f"use --onnx {models[0]}=FOLDER")
        given[model] = folder
    return given


def main(argv: list[str] | None = None) -> int:
    from .._errors import EdgeSLMError

    try:
        return _run(_parser().parse_args(argv))
    except EdgeSLMError as exc:
        _console(stderr=True).print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2


def _spread(items: list[Any], n: int) -> list[Any]:
    """*n* items spread evenly over *items* (the labeled sample is grouped by task)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(1, n - 1))] for i in range(n)]


def _run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .models import has_adapter
    from .report import EDGESLM, LLAMA_CPP, Report

    models = args.model or ["smollm2-135m"]
    onnx_given = _check(args, models)
    sections = args.only or [s for s in SECTIONS if s not in OPT_IN]
    report = Report(quick=args.quick)
    a = report.assumptions
    if args.requests_per_day:
        a.requests_per_day = args.requests_per_day
    if args.device_cost is not None:
        a.device_cost_usd = args.device_cost
    if args.gpu_server_hourly is not None:
        a.gpu_server_usd_per_hour = args.gpu_server_hourly
    if args.api_price:
        a.api_usd_per_m_input, a.api_usd_per_m_output = args.api_price
    if args.escalation_budget is not None:
        a.escalation_budget = args.escalation_budget
    if args.cloud_accuracy is not None:
        a.cloud_accuracy = args.cloud_accuracy

    task_examples: list[Any] = []
    task_source = "your task"
    if "task" in sections or "onnx" in sections:
        if args.task:
            from .task import load_task

            task_examples, errors = load_task(args.task)
            task_source = f"--task {args.task}"
            err = _console(stderr=True)
            for e in errors:  # text from the file: printed as it is, never read as markup
                report.notes.append(f"{args.task}: {e} (skipped)")
                err.print(f"{args.task}: {e} (skipped)", style="yellow", markup=False, soft_wrap=True)
        else:
            task_examples, where = _default_task(args.quick)
            if where:
                report.notes.append(f"task: {where}")
                task_source = where
        if args.limit:
            task_examples = task_examples[: args.limit]

    def timed(section: str, model: str, t0: float) -> None:
        key = f"{section} · {model}"
        report.section_seconds[key] = round(time.perf_counter() - t0, 1)

    t_start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_console(stderr=True), transient=True) as bar:
        for model in models:
            res: dict[str, Any] = report.sections.setdefault(model, {})
            peer = not args.no_peer and not has_adapter(model)  # a base+adapter's peer would be its base's
            if "speed" in sections:
                from .speed import decode_speed

                t0 = time.perf_counter()
                reps = 3 if args.quick else 5
                job = bar.add_task(f"speed · {model}", total=reps)
                r = res["speed"] = decode_speed(model, n_tokens=64 if args.quick else 128, reps=reps,
                                                n_threads=args.threads,
                                                tick=lambda n, j=job: bar.update(j, completed=n))
                report.add(model, "decode", EDGESLM, tokens=r["tokens"], decode_tok_s=r["edgeslm_tok_s"],
                           prompt_tok_s=r["edgeslm_prompt_tok_s"], ttft_s=r["edgeslm_ttft_s"])
                report.add(model, "decode", "llama-cpp-python Llama.generate", tokens=r["tokens"],
                           decode_tok_s=r["llama_cpp_python_tok_s"])
                timed("speed", model, t0)
            if "extract" in sections:
                from .extract import extraction_bench

                t0 = time.perf_counter()
                n = args.limit or (3 if args.quick else 120)
                job = bar.add_task(f"extract · {model}", total=n)
                r = res["extract"] = extraction_bench(model, quick=args.quick, n_threads=args.threads, n=n,
                                                      block=max(1, min(10, n)),
                                                      tick=lambda k, j=job: bar.update(j, completed=k))
                items = r["schemas"]
                report.add(model, "extract", EDGESLM, items=items, valid_rate=r["edgeslm_valid"] / max(1, items),
                           s_per_item=r["edgeslm_wall_s"] / max(1, items))
                report.add(model, "extract", "llama-cpp-python response_format", items=items,
                           valid_rate=r["peer_valid"] / max(1, items), s_per_item=r["peer_wall_s"] / max(1, items),
                           crashes=r["peer_crashes"])
                timed("extract", model, t0)
            if "bfcl" in sections:
                from .bfcl import CATEGORIES, bfcl_bench, corpus_path

                if corpus_path() is None:
                    report.notes.append("bfcl: the BFCL sample was not found (shared/conformance/bfcl)")
                else:
                    t0 = time.perf_counter()
                    per = max(1, args.limit // len(CATEGORIES)) if args.limit else (1 if args.quick else 10)
                    passes = tuple(args.bfcl_passes or (("auto",) if args.quick else ("auto", "named", "required")))
                    job = bar.add_task(f"bfcl · {model}", total=len(passes))
                    # --quick bounds the peer's runaway argument completions (seen at 170 s) to 30 s
                    r = res["bfcl"] = bfcl_bench(model, per_category=per, n_threads=args.threads, peer=peer,
                                                 passes=passes, peer_timeout_s=10.0 if args.quick else 120.0,
                                                 quick=args.quick, max_tokens=128 if args.quick else 256,
                                                 progress=lambda _r, j=job: bar.advance(j))
                    for key, system in (("edgeslm", EDGESLM), ("peer", "llama-cpp-python chatml-function-calling"),
                                        ("edgeslm_system", f"{EDGESLM}, system message"),
                                        ("peer_system", "llama-cpp-python chatml-function-calling, system message")):
                        s = r.get(key)
                        if s:
                            report.add(model, "bfcl", system, items=s["questions"], valid_rate=s["validity"],
                                       accuracy=s["ast_matches"] / max(1, s["questions"]),
                                       s_per_item=s["s_per_question"], calls=s["calls"])
                    timed("bfcl", model, t0)
            if "task" in sections and task_examples:
                from .task import task_bench

                t0 = time.perf_counter()
                job = bar.add_task(f"task · {model}", total=len(task_examples))
                r = res["task"] = task_bench(model, task_examples, n_threads=args.threads, peer=peer,
                                             tick=lambda k, j=job: bar.update(j, completed=k))
                for key, system in (("edgeslm", EDGESLM), ("peer", "llama-cpp-python response_format")):
                    s = r.get(key)
                    if s:
                        mean = None
                        lat = [x["s"] for x in r["rows"][key] if x["s"] is not None]
                        if lat:
                            mean = sum(lat) / len(lat)
                        report.add(model, "task", system, items=s["examples"], valid_rate=s["valid_rate"],
                                   accuracy=s["accuracy"], field_accuracy=s["field_accuracy"],
                                   latency_p50_s=s["latency_p50_s"], latency_p95_s=s["latency_p95_s"],
                                   s_per_item=mean, completion_tokens_mean=s["completion_tokens_mean"],
                                   prompt_tokens_mean=s.get("prompt_tokens_mean"))
                timed("task", model, t0)
                t0 = time.perf_counter()
                report.escalation.append(_escalation(args, model, task_examples, r["rows"]["edgeslm"],
                                                     task_source, report, bar))
                timed("escalation", model, t0)
            if "batch" in sections:
                from .batch import batch_bench, batch_documents

                t0 = time.perf_counter()
                try:
                    schema, docs = batch_documents(args.limit or (4 if args.quick else 64), args.batch_task)
                except Exception as exc:  # the labeled set ships with the repository, not the wheel
                    report.notes.append(f"batch: labeled set not available: {exc}")
                else:
                    job = bar.add_task(f"batch · {model}", total=2 * len(docs))
                    r = res["batch"] = batch_bench(model, schema, docs, n_threads=args.threads, peer=peer,
                                                   batch_size=args.batch_size, invariant_docs=1 if args.quick else 16,
                                                   tick=lambda k, j=job: bar.update(j, completed=k))
                    inv = r.get("invariant") or {}
                    report.add(model, "batch", EDGESLM, **r["extract_many"], batch_size=r["batch_size"],
                               decode_gain=r["decode_gain"], greedy_same=r["greedy_same"], bound=r["bound"],
                               auto_batch_size=r["auto"]["batched"],
                               invariant_same=inv.get("greedy_same"), invariant_docs=inv.get("documents"),
                               invariant_cost=inv.get("cost_one_at_a_time"))
                    auto = {k: v for k, v in r["auto"].items() if k != "batched"}
                    report.add(model, "batch", "edgeslm extract_many(batch_size=None)", **auto,
                               batch_size=r["auto"]["batched"])
                    report.add(model, "batch", "edgeslm extract, one at a time", **r["one_at_a_time"])
                    if r.get("peer"):
                        report.add(model, "batch", "llama-cpp-python response_format", **r["peer"])
                    report.notes.append(f"batch: {len(docs)} documents of benchmarks/labeled/{args.batch_task}")
                    timed("batch", model, t0)
            if "onnx" in sections:
                from .onnx import OG_LOOP, find_onnx, onnx_bench

                folder, where = find_onnx(model, onnx_given)
                if folder is None:
                    report.onnx.append({"model": model, "available": False, "why": where})
                    report.notes.append(f"onnx · {model}: no ONNX rows: {where}")
                else:
                    t0 = time.perf_counter()
                    reps = 3 if args.quick else 5
                    items = _spread(task_examples, args.limit or (2 if args.quick else 20))
                    job = bar.add_task(f"onnx · {model}", total=reps + len(items))
                    r = res["onnx"] = onnx_bench(model, folder, items, n_tokens=64 if args.quick else 128,
                                                 reps=reps, n_threads=args.threads,
                                                 tick=lambda k, j=job: bar.update(j, completed=k))
                    report.onnx.append({"model": model, "available": True, "folder": str(folder), "found": where,
                                        "load_s": r["load_s"]})
                    d = r["decode"]
                    report.add(model, "decode", EDGESLM, backend="onnx", tokens=d["tokens"],
                               decode_tok_s=d["edgeslm_tok_s"], prompt_tok_s=d["edgeslm_prompt_tok_s"],
                               ttft_s=d["edgeslm_ttft_s"])
                    report.add(model, "decode", OG_LOOP, backend="onnx", tokens=d["tokens"],
                               decode_tok_s=d["onnxruntime_genai_tok_s"])
                    for backend in ("onnx", LLAMA_CPP):
                        s = r["extract"].get(backend)
                        if s:
                            lat = [x["s"] for x in r["rows"][backend]]
                            report.add(model, "extract_latency", EDGESLM, backend=backend, items=s["examples"],
                                       valid_rate=s["valid_rate"], accuracy=s["accuracy"],
                                       latency_p50_s=s["latency_p50_s"], latency_p95_s=s["latency_p95_s"],
                                       s_per_item=sum(lat) / len(lat))
                    timed("onnx", model, t0)
            if "startup" in sections:
                from .startup import startup_bench

                t0 = time.perf_counter()
                reps = 2 if args.quick else 3
                job = bar.add_task(f"startup · {model}", total=reps)
                r = res["startup"] = startup_bench(model, reps=reps, n_threads=args.threads, peer=peer,
                                                   tick=lambda k, j=job: bar.update(j, completed=k))
                for key, system in (("edgeslm", EDGESLM), ("peer", "llama-cpp-python Llama + response_format")):
                    s = r.get(key)
                    if s:
                        report.add(model, "startup", system, runs=s["runs"], ok=s["ok"], s_per_item=s["s_median"],
                                   import_s=s["import_s"], load_s=s["load_s"], first_extract_s=s["first_extract_s"])
                        for e in s["errors"][:2]:
                            report.notes.append(f"startup · {model} · {system}: a run failed: {e}")
                timed("startup", model, t0)
            if "contention" in sections:
                from .contention import contention_bench

                t0 = time.perf_counter()
                reps = 2 if args.quick else 3
                job = bar.add_task(f"contention · {model}", total=2 * reps)
                r = res["contention"] = contention_bench(model, reps=reps, peer=peer,
                                                         tick=lambda k, j=job: bar.update(j, completed=k))
                for key, system in (("edgeslm", EDGESLM), ("peer", "llama-cpp-python Llama.generate, every core")):
                    s = r.get(key)
                    if s:
                        report.add(model, "contention", system, cores=r["cores"], tokens=r["tokens"],
                                   idle_tok_s=s["idle_tok_s"], busy_tok_s=s["busy_tok_s"],
                                   busy_over_idle=s["busy_over_idle"])
                timed("contention", model, t0)
            if "confidence" in sections:
                from .confidence import DATASETS, DEFAULT_N, QUICK_N, available, confidence_bench

                why = available()
                if why:
                    report.notes.append(f"confidence: {why}")
                else:
                    t0 = time.perf_counter()
                    n = max(2, args.limit // len(DATASETS)) if args.limit else (QUICK_N if args.quick else DEFAULT_N)
                    job = bar.add_task(f"confidence · {model}", total=n * len(DATASETS))
                    res["confidence"] = confidence_bench(model, n=n, n_threads=args.threads,
                                                         tick=lambda k, j=job: bar.update(j, completed=k))
                    timed("confidence", model, t0)
            if "serve" in sections:
                from .serve import serve_bench, summary

                t0 = time.perf_counter()
                job = bar.add_task(f"serve · {model}", total=3 if peer else 2)
                r = res["serve"] = serve_bench(model, clients=args.serve_clients, n_threads=args.threads, peer=peer,
                                               seconds=args.serve_seconds or (5 if args.quick else 20),
                                               tick=lambda j=job: bar.advance(j), batch_size=args.serve_batch_size)
                for system, figures in summary(r):
                    report.add(model, "serve", system, **figures)
                    report.notes.append(f"serve · {model} · {system}: " + ", ".join(
                        f"{k} {v}" for k, v in figures.items() if v is not None))
                if r.get("peer_skipped"):
                    report.notes.append(f"serve · {model}: llama_cpp.server skipped: {r['peer_skipped']}")
                timed("serve", model, t0)
    report.notes.append(f"wall time {time.perf_counter() - t_start:.0f} s")
    out = _console()
    report.render(out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2, default=str)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(report.markdown())
    if args.plot:
        from .plot import write_plots

        for path in write_plots(report, args.plot):
            out.print(f"chart: {path}", markup=False, highlight=False)
    return 0


def _escalation(args: argparse.Namespace, model: str, examples: list[Any], rows: list[dict[str, Any]],
                source: str, report: Any, bar: Any) -> dict[str, Any]:
    """The escalation view of one model's task rows (edgeslm), asking the cloud when told to."""
    from .escalation import DEFAULT_SHARES, ask_cloud, escalation_order, escalation_view
    from .report import EDGESLM
    from .task import score

    a = report.assumptions
    conf = [r.get("confidence") for r in rows]
    valid = [bool(r["valid"]) and r.get("confidence") is not None for r in rows]
    correct = [bool(r["exact"]) and v for r, v in zip(rows, valid, strict=True)]
    cloud = None
    cloud_correct = None
    if args.cloud_url:
        top = max((*DEFAULT_SHARES, a.escalation_budget))
        idx = escalation_order(conf, valid, top)
        job = bar.add_task(f"cloud · {model}", total=len(idx))
        key = os.environ[args.cloud_api_key_env] if args.cloud_api_key_env else None
        cloud = ask_cloud([examples[i] for i in idx], url=args.cloud_url, model=args.cloud_model, api_key=key,
                          timeout=args.cloud_timeout, compare=lambda got, exp: score(got, exp)[0],
                          tick=lambda k, j=job: bar.update(j, completed=k))
        cloud_correct = {i: row["right"] for i, row in zip(idx, cloud["rows"], strict=True)}
        for row, i in zip(cloud["rows"], idx, strict=True):
            row["id"] = examples[i]["id"]
    view = escalation_view(conf, correct, valid, budget=a.escalation_budget, cloud_accuracy=a.cloud_accuracy,
                           cloud_correct=cloud_correct)
    return {"model": model, "system": EDGESLM, "source": source, **view, "cloud": cloud}


if __name__ == "__main__":
    sys.exit(main())
