"""A stand-in for a chat-completions server (OpenAI, vLLM, llama.cpp server), for escalation tests.

Binds 127.0.0.1 on a random port and answers ``POST /v1/chat/completions`` in the OpenAI shape.
``behaviour`` switches what it does: ``"answer"`` (reply from ``answer``), ``"slow"`` (wait
``delay`` seconds, then answer), ``"500"``, ``"invalid_json"`` (a body that is not JSON), and
``"close"`` (drop the connection without a reply). Hostile ones: ``"drip"`` (headers, then one byte
of a body that never ends every ``delay`` seconds), ``"status"`` (answer ``status`` with ``headers``
and ``error_body``, after ``status_delay`` seconds: 429 + ``Retry-After``, 307 + ``Location``...),
``"echo400"`` (a 400 whose message quotes the last user message, as validation errors do) and
``"huge"`` (a valid completion whose content is ``huge_bytes`` long). Every request is recorded
(path, headers, body); ``open_connections`` counts the connections a client holds open now.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], dict[str, Any]]


def reply_content(content: str) -> Answer:
    """An answer function that always replies with this message content."""
    return lambda body: {"content": content}


def reply_tool_calls(*calls: tuple[str, dict[str, Any]]) -> Answer:
    """An answer function that replies with these ``(name, arguments)`` tool calls."""
    return lambda body: {"tool_calls": [{"name": n, "arguments": json.dumps(a)} for n, a in calls]}


class CloudStandin:
    """``with CloudStandin() as cloud: ... cloud.url ... cloud.requests``."""

    MAX_DELAY = 10.0  # a slow reply never holds a handler thread longer than this

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer: Answer = answer or reply_content("{}")
        self.behaviour = "answer"
        self.delay = 0.0
        self.requests: list[dict[str, Any]] = []
        self.status = 500
        self.headers: dict[str, str] = {}
        self.error_body = b'{"error": {"message": "error"}}'
        self.huge_bytes = 0
        self.status_delay = 0.0
        self.open_connections = 0
        self._lock = threading.Lock()
        self._stopped = False
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def handle(self) -> None:
                with standin._lock:
                    standin.open_connections += 1
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with standin._lock:
                        standin.open_connections -= 1

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with standin._lock:
                    standin.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body, "raw": raw})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, b'{"error": {"message": "not found"}}')
                mode = standin.behaviour
                if mode == "close":
                    self.close_connection = True
                    return
                if mode == "500":
                    return self._send(500, b'{"error": {"message": "internal error", "type": "server_error"}}')
                if mode == "invalid_json":
                    return self._send(200, b"{this is not json")
                if mode == "status":
                    time.sleep(min(standin.status_delay, standin.MAX_DELAY))
                    return self._send(standin.status, standin.error_body, standin.headers)
                if mode == "echo400":
                    last = ((body or {}).get("messages") or [{}])[-1].get("content")
                    return self._send(400, json.dumps({"error": {"message": f"invalid input: {last!r}"}}).encode())
                if mode == "drip":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000000")
                    self.end_headers()
                    t = time.monotonic()
                    while time.monotonic() - t < standin.MAX_DELAY * 3:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(standin.delay)
                    self.close_connection = True
                    return None
                if mode == "slow":
                    time.sleep(min(standin.delay, standin.MAX_DELAY))
                msg = standin.answer(body or {})
                if mode == "huge":
                    msg = {"content": json.dumps({"name": "x" * standin.huge_bytes, "email": "e"})}
                message: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
                finish = "stop"
                if msg.get("tool_calls"):
                    message["tool_calls"] = [
                        {"id": f"call_{i}", "type": "function",
                         "function": {"name": c["name"], "arguments": c["arguments"]}}
                        for i, c in enumerate(msg["tool_calls"])
                    ]
                    finish = "tool_calls"
                out = {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": msg.get("model") or (body or {}).get("model") or "standin",
                    "choices": [{"index": 0, "message": message, "finish_reason": msg.get("finish_reason", finish),
                                 "logprobs": None}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
                self._send(200, json.dumps(out).encode())

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="cloud-standin", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r["body"] for r in self.requests]

    def start(self) -> CloudStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (a second call does nothing)."""
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> CloudStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
