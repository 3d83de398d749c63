"""Compliance on JSONSchemaBench with the real SmolLM2: every returned object validates.

A bounded, deterministic sample (the full sweep is ``benchmarks/extraction_compliance.py``).
The hand-written MaskBench subset is logic puzzles ("a property named a4d must exist",
"a negative multiple of 420 that is not a multiple of 8"): no 135M model solves them from
"Generate a realistic example object.", so it is sampled separately and only held to the
guarantee that nothing invalid is ever returned.
"""

from __future__ import annotations

import pytest

from edgeslm.bench.extract import compliance, corpus_path, load_corpus, sample

if corpus_path() is None:
    pytest.skip("shared/conformance/jsonschemabench is not beside the project", allow_module_level=True)

PUZZLES = "Handwritten"


def _report(name: str, r: dict) -> None:
    summary = {k: v for k, v in r.items() if k != "failures"}
    print(f"\n{name}: {summary}")
    for f in r["failures"]:
        print("  ", f)


@pytest.mark.timeout(1200)
def test_realistic_schemas_always_valid_and_rarely_failed(smollm2) -> None:
    # 60 schemas keep the suite short; the 215-schema sweep is benchmarks/extraction_compliance.py
    rows = sample([r for r in load_corpus() if r["subset"] != PUZZLES], 60)
    r = compliance(smollm2, rows, max_tokens=256)
    _report("realistic", r)
    assert r.get("returned_invalid", 0) == 0
    assert r["served"] >= 55
    assert r.get("extraction_failed", 0) / r["served"] < 0.02


@pytest.mark.timeout(1200)
def test_puzzle_schemas_never_return_invalid_data(smollm2) -> None:
    rows = sample([r for r in load_corpus() if r["subset"] == PUZZLES], 6)
    r = compliance(smollm2, rows, max_tokens=128)
    _report("puzzles", r)
    assert r.get("returned_invalid", 0) == 0
    assert r.get("valid", 0) + r.get("extraction_failed", 0) + r.get("refused", 0) + r.get("skipped_context", 0) == 6
