"""``python -m edgeslm.bench``: speed, extraction, tool calls and your own task, each beside a
baseline measured in the same run (llama-cpp-python on the same model and threads), as tables.

    python -m edgeslm.bench --quick                       # every section, small samples
    python -m edgeslm.bench --model smollm2-135m --model my-q8.gguf --task my_task.jsonl
    python -m edgeslm.bench --markdown report.md --json report.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

SECTIONS = ("speed", "extract", "bfcl", "task")


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeslm.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=None,
                   help="catalog id or file path; repeat to compare models or quantizations side by side")
    p.add_argument("--quick", action="store_true", help="every section on small samples (under 2 minutes on 2 cores)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, choices=SECTIONS, help="sections to run (default: all)")
    p.add_argument("--task", default=None, help="your task: JSON Lines of {text, schema, expected[, id]}")
    p.add_argument("--limit", type=int, default=None, help="at most this many items per section")
    p.add_argument("--no-peer", action="store_true", help="skip the llama-cpp-python baseline")
    p.add_argument("--bfcl-passes", nargs="+", default=None, choices=["auto", "named", "required"],
                   help="bfcl: tool_choice passes to run (default: auto; all three without --quick)")
    p.add_argument("--requests-per-day", type=int, default=None, help="cost view: daily volume")
    p.add_argument("--device-cost", type=float, default=None, help="cost view: price of this device, USD")
    p.add_argument("--gpu-server-hourly", type=float, default=None, help="cost view: rented GPU server, USD/h")
    p.add_argument("--api-price", type=float, nargs=2, default=None, metavar=("IN", "OUT"),
                   help="cost view: frontier API USD per million input and output tokens")
    p.add_argument("--json", default=None, help="write the machine-readable record here")
    p.add_argument("--markdown", default=None, help="write the tables as Markdown here")
    args = p.parse_args(argv)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .report import EDGESLM, Report

    models = args.model or ["smollm2-135m"]
    sections = args.only or list(SECTIONS)
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
    peer = not args.no_peer

    task_examples: list[Any] = []
    if "task" in sections:
        if args.task:
            from .task import load_task

            task_examples, errors = load_task(args.task)
            for e in errors:
                report.notes.append(f"{args.task}: {e} (skipped)")
                _console(stderr=True).print(f"[yellow]{args.task}: {e} (skipped)[/yellow]")
        else:
            task_examples, where = _default_task(args.quick)
            if where:
                report.notes.append(f"task: {where}")
        if args.limit:
            task_examples = task_examples[: args.limit]

    t_start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_console(stderr=True), transient=True) as bar:
        for model in models:
            res: dict[str, Any] = report.sections.setdefault(model, {})
            if "speed" in sections:
                from .speed import decode_speed

                reps = 3 if args.quick else 5
                job = bar.add_task(f"speed · {model}", total=reps)
                r = res["speed"] = decode_speed(model, n_tokens=64 if args.quick else 128, reps=reps,
                                                n_threads=args.threads,
                                                tick=lambda n, j=job: bar.update(j, completed=n))
                report.add(model, "decode", EDGESLM, tokens=r["tokens"], decode_tok_s=r["edgeslm_tok_s"],
                           prompt_tok_s=r["edgeslm_prompt_tok_s"], ttft_s=r["edgeslm_ttft_s"])
                report.add(model, "decode", "llama-cpp-python Llama.generate", tokens=r["tokens"],
                           decode_tok_s=r["llama_cpp_python_tok_s"])
            if "extract" in sections:
                from .extract import extraction_bench

                n = args.limit or (6 if args.quick else 120)
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
            if "bfcl" in sections:
                from .bfcl import CATEGORIES, bfcl_bench, corpus_path

                if corpus_path() is None:
                    report.notes.append("bfcl: the BFCL sample was not found (shared/conformance/bfcl)")
                else:
                    per = max(1, args.limit // len(CATEGORIES)) if args.limit else (1 if args.quick else 10)
                    passes = tuple(args.bfcl_passes or (("auto",) if args.quick else ("auto", "named", "required")))
                    job = bar.add_task(f"bfcl · {model}", total=len(passes))
                    r = res["bfcl"] = bfcl_bench(model, per_category=per, n_threads=args.threads, peer=peer,
                                                 passes=passes, progress=lambda _r, j=job: bar.advance(j))
                    for key, system in (("edgeslm", EDGESLM), ("peer", "llama-cpp-python chatml-function-calling")):
                        s = r.get(key)
                        if s:
                            report.add(model, "bfcl", system, items=s["questions"], valid_rate=s["validity"],
                                       accuracy=s["ast_matches"] / max(1, s["questions"]),
                                       s_per_item=s["s_per_question"], calls=s["calls"])
            if "task" in sections and task_examples:
                from .task import task_bench

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
    report.notes.append(f"wall time {time.perf_counter() - t_start:.0f} s")
    out = _console()
    report.render(out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2, default=str)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(report.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
