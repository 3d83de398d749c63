"""Command line of the benchmark: ``python -m edgeslm.bench [--quick] [--model M]``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeslm.bench", description=__doc__)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--quick", action="store_true", help="small samples, a minute or two")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="sections to run: speed extract bfcl")
    p.add_argument("--limit", type=int, default=None,
                   help="bfcl: about this many questions in all, split evenly over the categories")
    p.add_argument("--bfcl-passes", nargs="+", default=["auto", "named", "required"],
                   choices=["auto", "named", "required"], help="bfcl: tool_choice passes to run")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    sections = args.only or ["speed", "extract"]
    results: dict[str, Any] = {}
    if "speed" in sections:
        from .speed import decode_speed

        results["speed"] = decode_speed(args.model, n_tokens=64 if args.quick else 128,
                                        reps=3 if args.quick else 5, n_threads=args.threads)
    if "extract" in sections:
        try:
            from .extract import extraction_bench
        except ImportError:
            pass
        else:
            results["extract"] = extraction_bench(args.model, quick=args.quick, n_threads=args.threads)
    if "bfcl" in sections:
        from .bfcl import CATEGORIES, bfcl_bench, corpus_path, table

        if corpus_path() is not None:
            per_category = max(1, args.limit // len(CATEGORIES)) if args.limit else (3 if args.quick else 10)
            results["bfcl"] = bfcl_bench(args.model, per_category=per_category, n_threads=args.threads,
                                         passes=tuple(args.bfcl_passes))
            print(table(results["bfcl"]), file=sys.stderr)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
