"""Which confidence score tells right extractions from wrong ones: AUROC and ECE of every candidate
score (edgeslm.decoding.scores) on the labeled set in benchmarks/labeled, per task and pooled, with
the bundled model (or --model). The chosen score is the one `edgeslm.calibrate` would pick; errors
caught are out of fold at 5 % and 10 % budgets.

    python benchmarks/confidence.py [--model smollm2-135m] [--limit 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import edgeslm
from edgeslm.api.calibrate import DEFAULT_SCORES, fields_match
from edgeslm.bench.labeled import load_task, tasks
from edgeslm.escalation.calibration import auroc, build_report, ece


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=0, help="examples per task (0: all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model = edgeslm.load(args.model, n_ctx=2048)
    values: dict[str, list[float]] = {k: [] for k in DEFAULT_SCORES}
    correct: list[bool] = []
    valid: list[bool] = []
    t0 = time.perf_counter()
    for task in tasks():
        schema, examples = load_task(task)
        for ex in examples[: args.limit or None]:
            try:
                x = model.extract(ex["text"], schema, temperature=0.0)
            except edgeslm.ExtractionFailed:
                x = None
            valid.append(x is not None)
            correct.append(x is not None and fields_match(x.data, ex["expected"]))
            for k, fn in DEFAULT_SCORES.items():
                values[k].append(float(fn(x)) if x is not None else float("nan"))
    took = time.perf_counter() - t0
    ok = [i for i, v in enumerate(valid) if v]
    y = [correct[i] for i in ok]
    rows = {}
    for k, v in values.items():
        s = [v[i] for i in ok]
        rows[k] = {"auroc": auroc(s, y), "ece_raw": ece([min(1.0, max(0.0, a)) for a in s], y, 10)}
    out = {"model": model.name, "n": len(valid), "valid": len(ok), "right": sum(correct), "seconds": round(took, 1),
           "candidates": rows}
    for budget in (0.05, 0.10):
        rep = build_report(values, correct, valid, budget=budget)
        out[f"budget_{budget:g}"] = {"chosen": rep.score, "auroc": rep.auroc, "ece_calibrated": rep.ece,
                                      "share_escalated": rep.share_escalated, "errors_caught": rep.errors_caught,
                                      "local_accuracy": rep.local_accuracy,
                                      "accuracy_if_cloud_right": rep.accuracy_if_cloud_right}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
