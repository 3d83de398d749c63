"""``edgeslm teach``: have a bigger model (any chat-completions server) label your texts for a schema."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from .._errors import InvalidRequestError

REDACTED = "[REDACTED]"


def _schema(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"cannot read the schema {path}: {exc}", hint="pass a JSON Schema file") from None


def _api_key(var: str | None) -> str | None:
    """The key from the variable --api-key-env names; no variable is read unless one is named."""
    if var is None:
        return None
    key = os.environ.get(var)
    if not key:
        raise InvalidRequestError(f"the environment variable {var} (--api-key-env) is not set or empty",
                                  hint=f"export {var}=... first, or leave --api-key-env out for a server without keys")
    return key


def _redactor(patterns: list[str] | None) -> Callable[[str], str] | None:
    """A function replacing every match of the --redact patterns with [REDACTED], or None without any."""
    if not patterns:
        return None
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            raise InvalidRequestError(f"--redact {p!r} is not a regular expression: {exc}",
                                      hint=r"e.g. --redact '[\w.+-]+@[\w-]+\.[\w.]+' for e-mail addresses") from None

    def redact(s: str) -> str:
        for c in compiled:
            s = c.sub(REDACTED, s)
        return s

    return redact


def cmd_teach(args: argparse.Namespace) -> int:
    """Label the texts with the teacher; print the report's summary (and the first failures)."""
    from rich.markup import escape

    from ..distill.teach import teach
    from ..escalation.targets import OpenAICompatible
    from . import _console

    schema = _schema(args.schema)
    redact = _redactor(args.redact)
    teacher = OpenAICompatible(args.teacher, args.model, api_key=_api_key(args.api_key_env))
    report = teach(args.texts, schema, teacher=teacher, out=args.out, instructions=args.instructions, redact=redact,
                   max_requests=args.max_requests, max_tokens=args.max_tokens, timeout=args.timeout,
                   progress=sys.stderr.isatty(), resume=not args.no_resume)
    err = _console(stderr=True)
    for i, reason in report.failed[:5]:
        err.print(f"[yellow]failed:[/yellow] text {i}: {escape(reason)}")
    if len(report.failed) > 5:
        err.print(f"[yellow]... and {len(report.failed) - 5} more failed[/yellow] (run again to retry them)")
    _console().print(str(report), markup=False, highlight=False)
    return 0


def register(sub: Any) -> None:
    """Add the ``teach`` verb to the ``edgeslm`` parser."""
    p = sub.add_parser("teach", help="have a bigger model label your texts for a schema (a fine-tuning dataset)")
    p.add_argument("texts", help='JSON Lines of texts: each line a JSON string or {"text": ...}')
    p.add_argument("--schema", "-s", required=True, help="JSON Schema file the labels must match")
    p.add_argument("--teacher", required=True, help="base URL of a chat-completions server, e.g. "
                   "https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    p.add_argument("--model", "-m", required=True, help="the teacher model's name on that server")
    p.add_argument("--out", "-o", required=True, help="JSON Lines dataset to append the labels to")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="environment variable holding the API key (no key is read without it)")
    p.add_argument("--instructions", default=None, help="instructions for the extraction (the system message)")
    p.add_argument("--max-requests", type=int, default=None, help="most requests this run sends")
    p.add_argument("--max-tokens", type=int, default=None, help="most tokens this run spends (the teacher's count)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument("--redact", action="append", default=None, metavar="REGEX",
                   help="replace matches with [REDACTED] before sending and writing (repeatable)")
    p.add_argument("--no-resume", action="store_true", help="refuse an output file that already has lines")
    p.set_defaults(func=cmd_teach)
