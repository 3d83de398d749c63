"""``edgeslm calibrate``: measure a model's confidence on labeled data and fit the escalation threshold."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._errors import InvalidRequestError


def _read_examples(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"cannot read the examples {path}: {exc}",
                                  hint='pass a JSON Lines file of {"text": ..., "expected": {...}}') from exc


def _inputs(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    if args.task:
        from ..bench.labeled import load_task

        try:
            return load_task(args.task)
        except FileNotFoundError as exc:
            raise InvalidRequestError(str(exc), hint="use --schema and --examples outside a checkout") from None
    if not (args.schema and args.examples):
        raise InvalidRequestError("give --task, or --schema and --examples",
                                  hint="e.g. edgeslm calibrate --task invoices, or your own labeled JSON Lines")
    try:
        with open(args.schema, encoding="utf-8") as f:
            schema = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"cannot read the schema {args.schema}: {exc}", hint="pass a JSON Schema file") \
            from exc
    return schema, _read_examples(args.examples)


def render(report: Any, console: Any) -> None:
    """Print a report as a rich table, then its warnings."""
    from rich.table import Table

    table = Table(title=f"Calibration of {report.model or 'the model'} (score: {report.score})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in report.rows():
        table.add_row(name, value)
    console.print(table)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run the model over labeled examples; print the report (and save it with --out)."""
    import edgeslm

    from . import _console

    schema, examples = _inputs(args)
    if args.limit is not None:
        examples = examples[: args.limit]
    err = _console(stderr=True)
    with edgeslm.load(args.model, backend=args.backend, device=args.device, n_ctx=args.n_ctx) as model:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as bar:
            job = bar.add_task("extracting", total=len(examples))
            report = edgeslm.calibrate(model, examples, schema=schema, budget=args.budget, method=args.method,
                                       max_tokens=args.max_tokens, progress=lambda i, n: bar.update(job, completed=i))
    if args.out:
        report.save(args.out)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        render(report, _console())
        if args.out:
            _console().print(f"saved to {args.out}: Escalation(target, min_confidence={args.out!r})", markup=False)
    return 0


def register(sub: Any) -> None:
    """Add the ``calibrate`` verb to the ``edgeslm`` parser."""
    from . import _common

    p = sub.add_parser("calibrate", help="measure confidence on labeled data; fit the escalation threshold")
    _common(p)
    p.add_argument("--task", default=None, help="a labeled task of the checkout's benchmarks/labeled (e.g. invoices)")
    p.add_argument("--schema", "-s", default=None, help="JSON Schema file (with --examples)")
    p.add_argument("--examples", "-e", default=None, help='JSON Lines of {"text": ..., "expected": {...}}')
    p.add_argument("--budget", type=float, default=0.05, help="most share of calls to escalate (default 0.05)")
    p.add_argument("--method", default="auto", choices=["auto", "isotonic", "platt"])
    p.add_argument("--limit", type=int, default=None, help="use the first N examples")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--out", "-o", default=None, help="save the report as JSON here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_calibrate)
