"""``edgeslm serve MODEL``: the command-line verb of :func:`edgeslm.serve`."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["cmd_serve", "register"]


def _adapter(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH")
    return name, path


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model on an OpenAI-compatible endpoint until Ctrl-C or SIGTERM."""
    from ..server import env_api_key, serve

    serve(args.model, adapters=dict(args.adapter) if args.adapter else None, host=args.host, port=args.port,
          api_key=args.api_key or env_api_key(), insecure_no_auth=args.insecure_no_auth, cors=args.cors or None,
          config=args.config, n_ctx=args.n_ctx, backend=args.backend, device=args.device, log_level=args.log_level,
          batch_size=args.batch_size)
    return 0


def register(sub: Any) -> None:
    """Add the ``serve`` verb to the ``edgeslm`` parser."""
    p = sub.add_parser("serve", help="serve a model on an OpenAI-compatible HTTP endpoint (pip install edgeslm[serve])",
                       description="Serve MODEL at http://HOST:PORT/v1 (chat completions with streaming, tools, "
                       "response_format json_schema; /v1/models; /health).")
    p.add_argument("model", help="catalog id, .gguf file or ONNX folder")
    p.add_argument("--adapter", action="append", type=_adapter, default=None, metavar="NAME=PATH",
                   help="a LoRA adapter, served as model 'MODEL_ID:NAME' (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other "
                   "needs --api-key or --insecure-no-auth)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set EDGESLM_API_KEY)")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback --host without a key")
    p.add_argument("--cors", action="append", default=None, metavar="ORIGIN", help="allow this browser origin")
    p.add_argument("--config", default=None, metavar="FILE", help="JSON or TOML: limits and escalation")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="response_format requests decoded together at most (default: chosen; 1: one at a time)")
    p.add_argument("--n-ctx", type=int, default=None, help="context window in tokens")
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "metal", "gpu"])
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
