"""``edgeslm extract``: structured extraction from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from .._errors import ContextLengthError, EdgeSLMError, InvalidRequestError, SchemaError, json_kind
from ..api.generation import MAX_CHARS_PER_TOKEN


def cmd_extract(args: argparse.Namespace) -> int:
    """Extract JSON from a file (or stdin) with a JSON Schema file; print the validated JSON.

    Several input files, or ``--jsonl`` (one document per line of standard input or of each file:
    a JSON string or ``{"text": ...}``), write JSON Lines: ``{"index", "input", "data"}`` per
    document, or ``{"index", "input", "error"}`` for one that failed: an input file that cannot be
    read, a line that is not a document, an extraction that failed (the others still run).
    Fields the model was unsure of (``field_confidence`` below ``--flag-below``, default 0.5) are
    named on stderr; ``--confidence`` adds the scores to the output.
    Exit status: 0 when every document was extracted, 1 when any failed; 2 (an error on stderr)
    when nothing could run, e.g. the schema or the model, or the only input, cannot be read; 3 when
    every document was extracted but a field is below ``--min-confidence``."""
    import edgeslm

    try:
        with open(args.schema, encoding="utf-8") as f:
            schema = json.load(f)
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read the schema {args.schema}: {exc}", hint="pass a JSON Schema file") from exc
    inputs = args.input or ["-"]
    many = args.jsonl or len(inputs) > 1
    if not many:
        _probe(inputs[0])  # before the model loads: an unreadable input fails at once
    with edgeslm.load(args.model, backend=args.backend, device=args.device, n_ctx=args.n_ctx,
                      batch_invariant=args.batch_invariant) as model:
        limit = MAX_CHARS_PER_TOKEN * model.n_ctx  # more cannot fit: read no further (issue #24)
        if not many:
            one = _read(inputs[0], limit, model.n_ctx)
            x = model.extract(one, schema, instructions=args.instructions, max_tokens=args.max_tokens)
            out: Any = x.to_dict() if args.full else _plain(x.data)
            if args.confidence and not args.full:
                out = {"data": out, "confidence": x.confidence, "field_confidence": x.field_confidence}
            print(json.dumps(out, indent=None if args.compact else 2, ensure_ascii=False))
            return 3 if _flag(x, inputs[0], args) else 0
        where: list[str] = []  # each document's place, kept; the texts are read as the batch needs them
        broken: dict[int, EdgeSLMError] = {}  # documents that could not be read: their own error is reported

        def texts() -> Iterator[Any]:
            for place, text in _documents(inputs, args.jsonl, limit, model.n_ctx):
                if isinstance(text, EdgeSLMError):
                    broken[len(where)] = text
                    text = None  # not a text: extract_iter answers it with an error, replaced by this one
                where.append(place)
                yield text

        failed = unsure = 0
        results = model.extract_iter(texts(), schema, instructions=args.instructions, max_tokens=args.max_tokens,
                                     progress=args.progress, total=None if args.jsonl else len(inputs),
                                     batch_size=args.batch_size)
        for i, r in results:
            r = broken.pop(i, r)
            line: dict[str, Any] = {"index": i, "input": where[i]}
            if isinstance(r, edgeslm.EdgeSLMError):
                failed += 1
                line["error"] = {"type": type(r).__name__, "message": r.message, "hint": r.hint}
            else:
                line["data"] = r.to_dict() if args.full else _plain(r.data)
                if args.confidence and not args.full:
                    line["confidence"], line["field_confidence"] = r.confidence, r.field_confidence
                unsure += _flag(r, f"[{i}] {where[i]}", args)
            print(json.dumps(line, ensure_ascii=False), flush=True)
    return 1 if failed else 3 if unsure else 0


def _plain(data: Any) -> Any:
    return data.model_dump(mode="json") if hasattr(data, "model_dump") else data


def _flag(x: Any, where: str, args: argparse.Namespace) -> bool:
    """Name on stderr the fields of *x* the model was unsure of; whether one is below ``--min-confidence``."""
    bar = args.flag_below if args.min_confidence is None else max(args.flag_below, args.min_confidence)
    low = sorted((c, f) for f, c in (x.field_confidence or {}).items() if c < bar)
    for c, f in low:
        print(f"edgeslm extract: {where}: {f or '/'} has confidence {c:.2f} (below {bar:g}): check it",
              file=sys.stderr)
    return args.min_confidence is not None and any(c < args.min_confidence for c, _ in low)


_READ_HINT = "pass a UTF-8 text file, or - to read standard input"
_LINE_HINT = 'each line of a --jsonl input is one document: a JSON string, or an object {"text": "..."}'


def _unreadable(name: str, exc: BaseException) -> InvalidRequestError:
    if isinstance(exc, UnicodeDecodeError):
        why = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    elif isinstance(exc, IsADirectoryError) or (name != "-" and os.path.isdir(name)):
        why = "it is a folder, not a file"
    else:
        why = getattr(exc, "strerror", None) or str(exc)
    return InvalidRequestError(f"cannot read the input {name}: {why}", hint=_READ_HINT)


def _probe(name: str) -> None:
    """Raise the input's error now if it cannot be opened (a folder, missing, no permission)."""
    if name == "-":
        return
    try:
        with open(name, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise _unreadable(name, exc) from exc


def _too_long(what: str, limit: int, n_ctx: int, unit: str = "characters") -> ContextLengthError:
    return ContextLengthError(
        f"{what} is longer than {limit:,} {unit} (read no further): the context window of {n_ctx:,} "
        "tokens cannot hold it", n_prompt=n_ctx + 1, n_ctx=n_ctx,
        hint="split the document, or load the model with a larger --n-ctx")


def _read(name: str, limit: int | None = None, n_ctx: int = 0) -> str:
    """The text of a UTF-8 file (``-``: standard input), read up to *limit* characters: a longer one
    is a :class:`ContextLengthError` in constant memory."""
    try:
        if name == "-":
            text = sys.stdin.read(-1 if limit is None else limit + 1)
        else:
            with open(name, encoding="utf-8") as f:
                text = f.read(-1 if limit is None else limit + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise _unreadable(name, exc) from exc
    if limit is not None and len(text) > limit:
        raise _too_long(f"the input {name}", limit, n_ctx)
    return text


class _LongLine:
    """A line of a ``--jsonl`` input that was longer than the context can hold (not read whole)."""


def _lines(name: str, limit: int | None = None) -> Iterator[bytes | str | _LongLine]:
    """The lines of a file (``-``: standard input), read as they are needed; undecoded where the
    stream gives bytes, so that a line that is not UTF-8 is only that line's error. A line over
    *limit* bytes is skipped to its end in chunks and given as a :class:`_LongLine`."""
    try:
        if name == "-":
            f = getattr(sys.stdin, "buffer", sys.stdin)
            yield from _capped(f, limit)
            return
        with open(name, "rb") as f:
            yield from _capped(f, limit)
    except (OSError, UnicodeDecodeError) as exc:
        raise _unreadable(name, exc) from exc


def _capped(f: Any, limit: int | None) -> Iterator[bytes | str | _LongLine]:
    if limit is None:
        yield from f
        return
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and line[-1:] not in (b"\n", "\n"):
            while True:  # the rest of the line, a chunk at a time
                rest = f.readline(1 << 20)
                if not rest or rest[-1:] in (b"\n", "\n"):
                    break
            yield _LongLine()
        else:
            yield line


def _document(line: bytes | str | _LongLine, place: str, n: int, limit: int = 0,
              n_ctx: int = 0) -> str | EdgeSLMError:
    """The text of one ``--jsonl`` line, or the error saying what the line is instead."""
    at = f"line {n} of {place}"
    if isinstance(line, _LongLine):
        return _too_long(at, limit, n_ctx, "bytes")
    try:
        text = line.decode("utf-8-sig") if isinstance(line, bytes) else line
        value = json.loads(text)
    except UnicodeDecodeError as exc:
        return InvalidRequestError(f"{at} is not UTF-8 text ({exc.reason} at byte {exc.start})", hint=_LINE_HINT)
    except ValueError as exc:
        why = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        return InvalidRequestError(f"{at} is not JSON ({why}); a JSON string or an object with a \"text\" "
                                   "string was expected", hint=_LINE_HINT)
    except RecursionError:
        return InvalidRequestError(f"{at} is JSON nested too deeply to read", hint=_LINE_HINT)
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return InvalidRequestError(f"{at} is {json_kind(value)}, not a document: a JSON string or an object with a "
                                   "\"text\" string was expected", hint=_LINE_HINT)
    if "text" not in value:
        keys = ", ".join(f'"{k}"' for k in list(value)[:5]) or "no keys"
        return InvalidRequestError(f'{at} is an object without a "text" field ({keys})', hint=_LINE_HINT)
    if not isinstance(value["text"], str):
        return InvalidRequestError(f'the "text" of {at} is {json_kind(value["text"])}, not a string', hint=_LINE_HINT)
    return value["text"]


def _documents(inputs: list[str], jsonl: bool, limit: int | None = None,
               n_ctx: int = 0) -> Iterator[tuple[str, str | EdgeSLMError]]:
    """``(where, text)`` of every document: a whole file each, or each line with ``--jsonl``. An
    input that cannot be read, or a line that is not a document, gives its error instead of a
    text, and the others still come."""
    for name in inputs:
        if not jsonl:
            try:
                doc: str | EdgeSLMError = _read(name, limit, n_ctx)
            except EdgeSLMError as exc:
                doc = exc
            yield name, doc
            continue
        place = "stdin" if name == "-" else name
        n = 0
        try:
            # a line holds at most 6 bytes per character of text (a JSON escape), and its "text" key
            line_limit = None if limit is None else 6 * limit + 1024
            for n, line in enumerate(_lines(name, line_limit), 1):  # n: where reading stopped, for an error
                if isinstance(line, _LongLine) or line.strip():
                    yield f"{place}:{n}", _document(line, place, n, line_limit or 0, n_ctx)
        except InvalidRequestError as exc:  # the input could not be opened, or stopped being readable
            yield (f"{place}:{n + 1}" if n else place), exc


def _share(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not within [0, 1]")
    return v


def register(sub: Any) -> None:
    """Add the ``extract`` verb to the ``edgeslm`` parser."""
    from . import _common

    p = sub.add_parser(
        "extract", help="extract JSON matching a schema from a text",
        epilog="With several inputs or --jsonl each document that fails (an input that cannot be read, a line "
        "that is not a document, an extraction that failed) is a JSON line with an \"error\" and the others "
        "still run. Exit status: 0 when every document was extracted, 1 when any failed, 2 when nothing could "
        "run (the schema or the model cannot be used, or the only input cannot be read), 3 when every document "
        "was extracted but a field's confidence is below --min-confidence.")
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
    p.add_argument("--confidence", action="store_true",
                   help="add confidence and field_confidence to the output (per document with many inputs)")
    p.add_argument("--flag-below", type=_share, default=0.5, metavar="P",
                   help="name on stderr each field whose confidence is below P (default 0.5; 0: none)")
    p.add_argument("--min-confidence", type=_share, default=None, metavar="P",
                   help="exit with status 3 when a field's confidence is below P (the data is still printed)")
    p.add_argument("--compact", action="store_true", help="one line of JSON")
    p.set_defaults(func=cmd_extract)
