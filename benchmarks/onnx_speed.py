"""Decode speed of edgeslm's loop over the ONNX backend against onnxruntime-genai's own generate loop.

Same model object (same ONNX Runtime session and threads), same prompt tokens, same number of greedy
tokens; the two are measured in interleaved repetitions and the medians are reported with their ratio.
Time runs from the first generated token to the last (prompt processing excluded). The measurement
itself is :func:`edgeslm.bench.onnx.onnx_decode_speed`, which ``python -m edgeslm.bench`` also runs
(its ``onnx`` section).

Usage: ``python benchmarks/onnx_speed.py [--tokens 128] [--reps 5] [--model FOLDER]``
(without ``--model``, the SmolLM2 ONNX test model is built or taken from the test cache).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=None, help="an ONNX GenAI folder (default: the SmolLM2 test model)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    folder = args.model
    if folder is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.onnx_model import smollm2_onnx

        folder = smollm2_onnx()
    import edgeslm
    from edgeslm.bench.onnx import onnx_decode_speed

    with edgeslm.load(folder, backend="onnx", n_ctx=2048) as model:
        result = onnx_decode_speed(model, args.tokens, args.reps)
    print(json.dumps({"model": str(folder), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
