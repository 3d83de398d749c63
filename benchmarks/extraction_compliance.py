"""Full JSONSchemaBench compliance sweep with a bundled model, reported by subset.

    python benchmarks/extraction_compliance.py [--model smollm2-135m] [--limit N] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import edgeslm
from edgeslm.bench.extract import compliance, load_corpus, sample


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--limit", type=int, default=None, help="deterministic sample size (default: all)")
    p.add_argument("--max-tokens", type=int, default=256)
    args = p.parse_args()
    rows = load_corpus()
    rows = sample(rows, args.limit or len(rows), max_schema_chars=10**9)
    by_subset = defaultdict(list)
    for r in rows:
        by_subset[r["subset"]].append(r)
    model = edgeslm.load(args.model, n_ctx=8192)
    out = {}
    for subset, rs in sorted(by_subset.items()):
        res = compliance(model, rs, max_tokens=args.max_tokens)
        out[subset] = {k: v for k, v in res.items() if k != "failures"}
        print(subset, json.dumps(out[subset]), flush=True)
    total = defaultdict(int)
    for v in out.values():
        for k, n in v.items():
            if isinstance(n, int):
                total[k] += n
    print("TOTAL", json.dumps(total))


if __name__ == "__main__":
    main()
