"""``edgeslm finetune``: a LoRA adapter for a base model from a chat-format dataset (edgeslm teach)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._errors import InvalidRequestError


def cmd_finetune(args: argparse.Namespace) -> int:
    """Train, then print where the adapter is and how to load it."""
    from ..distill.finetune import finetune
    from . import _console

    schema = None
    if args.schema:
        try:
            with open(args.schema, encoding="utf-8") as f:
                schema = json.load(f)
        except (OSError, ValueError) as exc:
            raise InvalidRequestError(f"cannot read the schema {args.schema}: {exc}",
                                      hint="pass a JSON Schema file") from None
    report = finetune(args.base, data=args.data, out=args.out, schema=schema, weights=args.weights, rank=args.rank,
                      alpha=args.alpha, epochs=args.epochs, learning_rate=args.learning_rate,
                      batch_size=args.batch_size, eval_fraction=args.eval_fraction, max_steps=args.max_steps,
                      max_length=args.max_length, seed=args.seed, device=args.device, threads=args.threads,
                      progress=sys.stderr.isatty())
    out = _console()
    out.print(str(report), markup=False, highlight=False)
    for why in report.skipped[:3]:
        out.print(f"skipped: {why}", markup=False, highlight=False)
    out.print(f'use it: edgeslm.load("{args.base}", adapters={{"task": "{report.out}"}}) and adapter="task" per call',
              markup=False, highlight=False)
    return 0


def register(sub: Any) -> None:
    """Add the ``finetune`` verb to the ``edgeslm`` parser."""
    p = sub.add_parser("finetune", help="train a LoRA adapter on a chat-format dataset (needs edgeslm[train])")
    p.add_argument("base", help="the model the adapter will run on: a catalog id or a .gguf file")
    p.add_argument("--data", "-d", required=True, help="chat-format JSON Lines (edgeslm teach, record_to)")
    p.add_argument("--out", "-o", required=True, help="folder for the adapter (PEFT files, adapter.gguf, card)")
    p.add_argument("--schema", "-s", default=None,
                   help="JSON Schema the answers follow: checked, and written as the grammar writes them")
    p.add_argument("--weights", default=None,
                   help="Hugging Face folder of the same model to train on (default: the GGUF, dequantized)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha (default 32)")
    p.add_argument("--epochs", type=int, default=4, help="passes over the data, at most (default 4)")
    p.add_argument("--learning-rate", type=float, default=3e-4, help="default 3e-4")
    p.add_argument("--batch-size", type=int, default=4, help="examples per optimizer step (default 4)")
    p.add_argument("--eval-fraction", type=float, default=0.15, help="held out for early stopping (default 0.15)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--max-length", type=int, default=1536, help="longest example in tokens (default 1536)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for training (default: all)")
    p.set_defaults(func=cmd_finetune)
