"""``edgeslm extract``: structured extraction from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from .._errors import InvalidRequestError, SchemaError


def cmd_extract(args: argparse.Namespace) -> int:
    """Extract JSON from a file (or stdin) with a JSON Schema file; print the validated JSON.

    Several input files, or ``--jsonl`` (one document per line of standard input or of each file:
    a JSON string or ``{"text": ...}``), write JSON Lines: ``{"index", "input", "data"}`` per
    document, or ``{"index", "input", "error"}`` for one that failed (the others still run)."""
    import edgeslm

    try:
        with open(args.schema, encoding="utf-8") as f:
            schema = json.load(f)
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read the schema {args.schema}: {exc}", hint="pass a JSON Schema file") from exc
    inputs = args.input or ["-"]
    many = args.jsonl or len(inputs) > 1
    with edgeslm.load(args.model, backend=args.backend, device=args.device, n_ctx=args.n_ctx,
                      batch_invariant=args.batch_invariant) as model:
        if not many:
            x = model.extract(_read(inputs[0]), schema, instructions=args.instructions, max_tokens=args.max_tokens)
            out: Any = x.to_dict() if args.full else x.data
            print(json.dumps(out, indent=None if args.compact else 2, ensure_ascii=False))
            return 0
        where: list[str] = []  # each document's place, kept; the texts are read as the batch needs them

        def texts() -> Iterator[Any]:
            for place, text in _documents(inputs, args.jsonl):
                where.append(place)
                yield text

        failed = 0
        results = model.extract_iter(texts(), schema, instructions=args.instructions, max_tokens=args.max_tokens,
                                     progress=args.progress, total=None if args.jsonl else len(inputs),
                                     batch_size=args.batch_size)
        for i, r in results:
            line: dict[str, Any] = {"index": i, "input": where[i]}
            if isinstance(r, edgeslm.EdgeSLMError):
                failed += 1
                line["error"] = {"type": type(r).__name__, "message": r.message, "hint": r.hint}
            else:
                line["data"] = r.to_dict() if args.full else (
                    r.data.model_dump(mode="json") if hasattr(r.data, "model_dump") else r.data)
            print(json.dumps(line, ensure_ascii=False), flush=True)
    return 1 if failed else 0


def _read(name: str) -> str:
    return "".join(_lines(name))


def _lines(name: str) -> Iterator[str]:
    """The lines of a UTF-8 file (``-``: standard input), read as they are needed."""
    try:
        if name == "-":
            yield from sys.stdin
            return
        with open(name, encoding="utf-8") as f:
            yield from f
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read the input {name}: {exc}",
                                  hint="pass a UTF-8 text file, or - to read standard input") from exc


def _documents(inputs: list[str], jsonl: bool) -> Iterator[tuple[str, Any]]:
    """``(where, text)`` of every document: a whole file each, or each line with ``--jsonl``."""
    for name in inputs:
        if not jsonl:
            yield name, _read(name)
            continue
        for n, line in enumerate(_lines(name), 1):
            if not line.strip():
                continue
            where = f"{'stdin' if name == '-' else name}:{n}"
            try:
                value = json.loads(line)
            except ValueError:
                yield where, None  # reported as that item's error
                continue
            yield where, value.get("text") if isinstance(value, dict) else value


def register(sub: Any) -> None:
    """Add the ``extract`` verb to the ``edgeslm`` parser."""
    from ..cli import _common

    p = sub.add_parser("extract", help="extract JSON matching a schema from a text")
    _common(p)
    p.add_argument("--schema", "-s", required=True, help="JSON Schema file")
    p.add_argument("input", nargs="*", help="text files, or - for stdin (default); several write JSON Lines")
    p.add_argument("--jsonl", action="store_true",
                   help='inputs hold one document per line (a JSON string or {"text": ...}); writes JSON Lines')
    p.add_argument("--progress", action="store_true", help="show a progress bar (on stderr) with many inputs")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="with many inputs, decode N documents together (llama.cpp); default: chosen from memory "
                   "and a measured gain, often 1 on a CPU")
    p.add_argument("--batch-invariant", action="store_true",
                   help="the same results whatever --batch-size (llama.cpp on the CPU, slower; see README)")
    p.add_argument("--instructions", default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--full", action="store_true", help="print confidence, attempts and usage too")
    p.add_argument("--compact", action="store_true", help="one line of JSON")
    p.set_defaults(func=cmd_extract)
