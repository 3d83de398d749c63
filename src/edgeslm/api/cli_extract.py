"""``edgeslm extract``: structured extraction from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._errors import InvalidRequestError, SchemaError


def cmd_extract(args: argparse.Namespace) -> int:
    """Extract JSON from a file (or stdin) with a JSON Schema file; print the validated JSON."""
    import edgeslm

    try:
        with open(args.schema, encoding="utf-8") as f:
            schema = json.load(f)
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read the schema {args.schema}: {exc}", hint="pass a JSON Schema file") from exc
    if args.input in (None, "-"):
        text = sys.stdin.read()
    else:
        try:
            with open(args.input, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(f"cannot read the input {args.input}: {exc}",
                                      hint="pass a UTF-8 text file, or - to read standard input") from exc
    with edgeslm.load(args.model, backend=args.backend, device=args.device, n_ctx=args.n_ctx) as model:
        x = model.extract(text, schema, instructions=args.instructions, max_tokens=args.max_tokens)
    out: Any = x.to_dict() if args.full else x.data
    print(json.dumps(out, indent=None if args.compact else 2, ensure_ascii=False))
    return 0


def register(sub: Any) -> None:
    """Add the ``extract`` verb to the ``edgeslm`` parser."""
    from ..cli import _common

    p = sub.add_parser("extract", help="extract JSON matching a schema from a text")
    _common(p)
    p.add_argument("--schema", "-s", required=True, help="JSON Schema file")
    p.add_argument("input", nargs="?", default="-", help="text file, or - for stdin (default)")
    p.add_argument("--instructions", default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--full", action="store_true", help="print confidence, attempts and usage too")
    p.add_argument("--compact", action="store_true", help="one line of JSON")
    p.set_defaults(func=cmd_extract)
