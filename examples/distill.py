"""Distillation end to end: a teacher labels your texts, a LoRA is trained, the adapter runs on the device.

    pip install -e ".[dev]"     # or: pip install "edgeslm[tiny,cloud,train]"
    python examples/distill.py --demo-teacher                      # offline: a local teacher stand-in
    python examples/distill.py --teacher https://api.openai.com/v1 --model gpt-4.1-mini --api-key-env OPENAI_API_KEY

1. ``edgeslm.teach``: the teacher (any chat-completions server) labels the training texts with the prompt
   edgeslm uses locally; every answer is checked against the schema; the labels go to ``train.jsonl``.
2. ``edgeslm.finetune``: a LoRA on the bundled SmolLM2-135M, trained on those labels (CPU, a few minutes).
3. ``python -m edgeslm.bench``: the base and the base with the adapter, side by side on held-out texts.

The texts are a labeled task of ``benchmarks/labeled`` (contacts by default): its gold labels score the
held-out part. ``--demo-teacher`` starts a chat-completions server on 127.0.0.1 that answers with those
gold labels (a stand-in for a frontier model, so the example runs with no network and no key).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import edgeslm

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def demo_teacher(gold: dict[str, Any]) -> Any:
    """A chat-completions server on 127.0.0.1 answering each text with its gold label."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            text = body["messages"][-1]["content"]
            content = json.dumps(gold.get(text, {}))
            reply = json.dumps({"id": "demo", "object": "chat.completion", "created": 0, "model": body["model"],
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": content}}],
                                "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": len(content) // 4,
                                          "total_tokens": (len(text) + len(content)) // 4}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def split(rows: list[dict[str, Any]], held_out: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and held-out rows, fixed by a hash of each id."""
    order = sorted(rows, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    return order[held_out:], order[:held_out]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="contacts", help="labeled task in benchmarks/labeled (default contacts)")
    p.add_argument("--teacher", default=None, help="base URL of the teacher's chat-completions API")
    p.add_argument("--model", default="teacher", help="the teacher model's name")
    p.add_argument("--api-key-env", default=None, help="environment variable holding the teacher's API key")
    p.add_argument("--demo-teacher", action="store_true", help="use a local stand-in teacher (gold labels)")
    p.add_argument("--base", default="smollm2-135m", help="the model the adapter is for (default smollm2-135m)")
    p.add_argument("--train", type=int, default=None, help="at most this many training texts")
    p.add_argument("--held-out", type=int, default=20, help="texts kept out of training, to score (default 20)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=None, help="stop training after this many steps")
    p.add_argument("--out", default="distill-out", help="folder for train.jsonl, held_out.jsonl and the adapter")
    args = p.parse_args(argv)
    if bool(args.teacher) == args.demo_teacher:
        p.error("give --teacher URL or --demo-teacher")

    from edgeslm.bench.labeled import load_task

    schema, rows = load_task(args.task)
    train, held = split(rows, args.held_out)
    train = train[: args.train] if args.train else train
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held_path = out / "held_out.jsonl"
    held_path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "schema": schema,
                                             "expected": r["expected"]}) + "\n" for r in held))

    # 1. the teacher labels the training texts (resumable: a rerun pays only for what is missing)
    with demo_teacher({r["text"]: r["expected"] for r in train}) if args.demo_teacher else _nothing() as url:
        key = os.environ[args.api_key_env] if args.api_key_env else None
        teacher = edgeslm.OpenAICompatible(url or args.teacher, args.model, api_key=key)
        taught = edgeslm.teach([r["text"] for r in train], schema, teacher=teacher, out=out / "train.jsonl",
                               progress=sys.stderr.isatty())
    print(f"teach: {taught}")

    # 2. a LoRA on the base, trained on the labels with the prompt edgeslm sends at inference
    report = edgeslm.finetune(args.base, data=out / "train.jsonl", out=out / "adapter", schema=schema,
                              epochs=args.epochs, max_steps=args.max_steps, progress=sys.stderr.isatty())
    print(f"finetune: {report}")

    # 3. base and base+adapter side by side on the held-out texts
    from edgeslm.bench.__main__ import main as bench

    return bench(["--model", args.base, "--model", f"{args.base}+adapter:{out / 'adapter'}",
                  "--task", str(held_path), "--only", "task", "--no-peer"])


@contextmanager
def _nothing() -> Any:
    yield None


if __name__ == "__main__":
    sys.exit(main())
