"""How far can a model's confidence be trusted? ``edgeslm.calibrate`` over the labeled set.

    python benchmarks/calibration.py --model smollm2-135m --tasks events invoices --budget 0.1 --json out.json

Per task: AUROC of today's confidence for "all fields right", ECE raw and calibrated (out of
fold), local accuracy, and what a budgeted escalation would send and catch.
"""

from __future__ import annotations

import argparse
import json
import time

import edgeslm
from edgeslm.bench.labeled import load_task, tasks
from edgeslm.cli.calibrate import render


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", nargs="*", default=None, help="default: every task")
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--json", default=None, help="write every report here")
    args = p.parse_args()
    from rich.console import Console

    console = Console(width=120)
    out = {}
    with edgeslm.load(args.model) as model:
        for name in args.tasks or tasks():
            schema, examples = load_task(name)
            examples = examples[: args.limit] if args.limit else examples
            t0 = time.perf_counter()
            rep = edgeslm.calibrate(model, examples, schema=schema, budget=args.budget, max_tokens=args.max_tokens)
            console.print(f"[bold]{name}[/bold]: {len(examples)} examples in {time.perf_counter() - t0:.0f} s")
            render(rep, console)
            out[name] = rep.to_dict()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
