"""An escalation target that speaks the OpenAI chat-completions API (a frontier API, vLLM, llama.cpp's
server...), through the official ``openai`` package, imported when the first target is created
(never by ``import edgeslm``).

Extraction goes out with ``response_format={"type": "json_schema", ...}``; tool calls with
``tools=`` (and ``tool_choice`` / ``parallel_tool_calls`` when set). The reply is parsed into a
:class:`~edgeslm.escalation.requests.CloudAnswer`; :class:`~edgeslm.Escalation` validates it.
"""

from __future__ import annotations

import importlib
import random
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .._errors import BackendUnavailableError, EscalationError, InvalidRequestError
from .requests import CloudAnswer, EscalationRequest

__all__ = ["OpenAICompatible"]

_INSTALL_HINT = 'pip install "edgeslm[cloud]"  (the official openai package)'
NO_KEY = "EMPTY"  # what servers without authentication (vLLM, llama.cpp) are conventionally given


def _strict_ok(s: Any) -> bool:
    """Whether *s* fits OpenAI's strict structured outputs: every object closed, every property required."""
    if isinstance(s, list):
        return all(_strict_ok(x) for x in s)
    if not isinstance(s, Mapping):
        return True
    props = s.get("properties")
    if isinstance(props, Mapping) or s.get("type") == "object":
        props = props if isinstance(props, Mapping) else {}
        if s.get("additionalProperties") is not False or set(s.get("required", [])) != set(props):
            return False
    return all(_strict_ok(v) for k, v in s.items() if k not in ("enum", "const", "default", "examples"))


def _schema_name(schema: Any) -> str:
    title = schema.get("title") if isinstance(schema, Mapping) else None
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", str(title or "extraction")).strip("_")[:64]
    return name or "extraction"


class OpenAICompatible:
    """Escalate to any server with the chat-completions API.

    ``api_key=None`` sends no credential (the placeholder ``"EMPTY"``): edgeslm never reads a key
    from the environment for you, so a key meant for one provider cannot reach another
    ``base_url``; pass ``api_key=os.environ["OPENAI_API_KEY"]`` yourself. ``strict=None`` asks
    for strict structured output only when the schema allows it (every object closed, all
    properties required).

    One hand-off has one deadline (the escalation's ``timeout``) covering the connection, every
    read and write, and every retry: each socket operation waits at most until then, so no thread
    or connection outlives it, and no request starts after it. ``max_retries``: more tries after a
    refused connection, HTTP 408/409/429 or 5xx, waiting ``Retry-After`` (or 0.5, 1, 2... s) only
    when the wait ends before the deadline. Redirects are not followed (the request would go, with
    its body, to wherever the server says) unless ``follow_redirects=True``. A reply body over
    ``max_response_bytes`` (default 4 MiB) is cut off at that size and refused.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        extra_headers: Mapping[str, str] | None = None,
        max_retries: int = 0,
        strict: bool | None = None,
        temperature: float | None = 0.0,
        max_tokens: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        follow_redirects: bool = False,
        max_response_bytes: int = 4 * 2**20,
    ) -> None:
        if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https") \
                or not urlsplit(base_url).netloc:
            raise InvalidRequestError(f"base_url must be an http(s) URL, not {base_url!r}",
                                      hint='e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8000/v1"')
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("model must be a non-empty string", hint='e.g. model="gpt-4.1-mini"')
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidRequestError(f"max_retries must be an int >= 0, not {max_retries!r}", hint="e.g. 0 or 2")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise InvalidRequestError(f"max_tokens must be >= 1, not {max_tokens!r}", hint="or leave it None")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes < 1:
            raise InvalidRequestError(f"max_response_bytes must be an int >= 1, not {max_response_bytes!r}",
                                      hint="e.g. 4 * 2**20 (4 MiB)")
        if not isinstance(follow_redirects, bool):
            raise InvalidRequestError("follow_redirects must be True or False", hint="it is False unless you need it")
        if api_key is not None and not isinstance(api_key, str):
            raise InvalidRequestError("api_key must be a string", hint="pass the key itself, or None for no key")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.extra_headers = dict(extra_headers or {})
        self.max_retries = max_retries
        self.strict = strict
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self.follow_redirects = follow_redirects
        self.max_response_bytes = max_response_bytes
        #: Whether every socket operation is held to the deadline (``False`` only where the installed
        #: openai/httpx do not have the transport this relies on: then each try gets the time left).
        self.socket_deadline = False
        self._client: Any = None
        self._lock = threading.Lock()
        self.client()  # import openai now, not on the first hand-off under its timeout (opens no socket)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICompatible(base_url={self.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        """Close the connections this target keeps open between hand-offs (a later hand-off opens
        new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> OpenAICompatible:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """How the audit log names this target (no key)."""
        return f"{self.base_url} ({self.model})"

    def client(self) -> Any:
        """The ``openai.OpenAI`` client, created (and ``openai`` imported) on first use."""
        with self._lock:
            if self._client is None:
                try:
                    import openai
                except ImportError as exc:
                    raise BackendUnavailableError(f"edgeslm.OpenAICompatible needs the openai package ({exc})",
                                                  hint=_INSTALL_HINT) from None
                http_client = openai.DefaultHttpxClient(follow_redirects=self.follow_redirects)
                self.socket_deadline = _hold_to_deadline(http_client)
                self._client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self._api_key or NO_KEY,
                    max_retries=0,  # retries are ours, within the deadline
                    default_headers=self.extra_headers or None,
                    http_client=http_client,
                )
            return self._client

    def body(self, request: EscalationRequest) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for *request*."""
        kw: dict[str, Any] = {"model": self.model, "messages": request.messages}
        if self.temperature is not None:
            kw["temperature"] = self.temperature
        max_tokens = self.max_tokens or request.max_tokens
        if max_tokens:
            kw["max_tokens"] = max_tokens
        if request.schema is not None and request.kind in ("extract", "chat"):
            strict = _strict_ok(request.schema) if self.strict is None else self.strict
            kw["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(request.schema), "schema": request.schema, "strict": strict},
            }
        if request.tools:
            kw["tools"] = request.tools
            if request.tool_choice is not None:
                kw["tool_choice"] = request.tool_choice
            if not request.parallel_tool_calls:
                kw["parallel_tool_calls"] = False
        if self.extra_body:
            kw["extra_body"] = self.extra_body
        return kw

    def __call__(self, request: EscalationRequest) -> CloudAnswer:
        """Send one request (with retries, all before its deadline); raise the openai error on failure,
        :class:`EscalationError` on an unusable reply. ``bytes_sent`` counts every try."""
        deadline = request.deadline if request.deadline is not None else time.monotonic() + request.timeout
        client, body = self.client(), self.body(request)
        sent = 0
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                exc = TimeoutError("the deadline passed before the next try")
                exc.bytes_sent = sent  # type: ignore[attr-defined]
                raise exc
            _LIMITS.deadline, _LIMITS.max_bytes, _LIMITS.read = deadline, self.max_response_bytes, 0
            try:
                raw = client.chat.completions.with_raw_response.create(**body, timeout=left)
                received = len(raw.content)
                break
            except Exception as exc:
                req = getattr(exc, "request", None)
                sent += (_body_size(req) or 0) if req is not None else 0
                if _too_large(exc):
                    raise EscalationError(f"the target's reply is over max_response_bytes="
                                          f"{self.max_response_bytes:,}; it was cut off there") from None
                wait = _retry_wait(exc, attempt) if attempt < self.max_retries else None
                if wait is None or time.monotonic() + wait >= deadline:
                    exc.bytes_sent = sent  # type: ignore[attr-defined]
                    raise
                time.sleep(wait)
                attempt += 1
            finally:
                _LIMITS.deadline = None
        sent += _body_size(raw.http_request) or 0
        try:
            resp = raw.parse()
            choice = resp.choices[0]
        except EscalationError:
            raise
        except Exception as exc:
            raise EscalationError(f"the target's reply is not a chat completion: {type(exc).__name__}: {exc}") from None
        msg = choice.message
        if getattr(msg, "refusal", None):
            raise EscalationError(f"the target refused: {msg.refusal}")
        if choice.finish_reason == "length":
            raise EscalationError("the target's answer was cut off (finish_reason=length)")
        calls = []
        for c in msg.tool_calls or []:
            fn = getattr(c, "function", None)
            if fn is None:
                raise EscalationError(f"the target returned a non-function tool call ({getattr(c, 'type', '?')})")
            calls.append({"id": c.id, "name": fn.name, "arguments": fn.arguments})
        return CloudAnswer(
            content=msg.content,
            tool_calls=calls,
            model=getattr(resp, "model", None) or self.model,
            finish_reason=choice.finish_reason,
            bytes_sent=sent,
            bytes_received=received,
            usage=_usage(getattr(resp, "usage", None)),
        )


def _usage(usage: Any) -> dict[str, int] | None:
    """The reply's token counts as a plain dict (only the integer fields present), or ``None``."""
    if usage is None:
        return None
    out = {k: v for k in ("prompt_tokens", "completion_tokens", "total_tokens")
           if isinstance(v := getattr(usage, k, None), int) and not isinstance(v, bool)}
    return out or None


def _body_size(http_request: Any) -> int | None:
    try:
        return len(http_request.content)
    except Exception:
        return None



# ------------------------------------------------------------------------------------ the deadline

_LIMITS = threading.local()  # the hand-off running in this thread: deadline, reply size cap, bytes read


class _TooLarge(Exception):
    """A reply body over ``max_response_bytes``."""


def _too_large(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, _TooLarge):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _retry_wait(exc: Exception, attempt: int) -> float | None:
    """Seconds to wait before another try after *exc*, or ``None`` when it is not worth one."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        if status not in (408, 409, 429) and status < 500:
            return None
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        for key, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
            try:
                value = float(headers.get(key)) * scale
            except (TypeError, ValueError):
                continue
            if value >= 0:
                return value
    elif "Timeout" in type(exc).__name__ or "Connection" not in type(exc).__name__:
        return None  # a timeout leaves no time; other errors are not the network's
    return min(8.0, 0.5 * 2**attempt) * (0.75 + 0.5 * random.random())


def _hold_to_deadline(http_client: Any) -> bool:
    """Make every connection of *http_client* (an httpx-style client) hold each socket operation to
    the deadline of the hand-off running in its thread; ``False`` where its transports are not the
    expected kind (then only the per-try timeout applies)."""
    transports = [getattr(http_client, "_transport", None), *(getattr(http_client, "_mounts", {}) or {}).values()]
    done = False
    for t in transports:
        pool = getattr(t, "_pool", None)
        inner = getattr(pool, "_network_backend", None)
        if inner is None or not hasattr(inner, "connect_tcp"):
            continue
        core = importlib.import_module(type(pool).__module__.split(".")[0])  # httpcore (or its successor)
        pool._network_backend = _DeadlineBackend(inner, core)
        done = True
    return done


def _cap(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = getattr(_LIMITS, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the hand-off's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineBackend:
    """A network backend whose streams wait no longer than the deadline of the hand-off in their thread."""

    def __init__(self, inner: Any, core: Any) -> None:
        self._inner, self._core = inner, core

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kw: Any) -> Any:
        stream = self._inner.connect_tcp(host, port, _cap(timeout, self._core.ConnectTimeout), **kw)
        return _DeadlineStream(stream, self._core)

    def connect_unix_socket(self, path: str, timeout: float | None = None, **kw: Any) -> Any:
        stream = self._inner.connect_unix_socket(path, _cap(timeout, self._core.ConnectTimeout), **kw)
        return _DeadlineStream(stream, self._core)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream:
    def __init__(self, inner: Any, core: Any) -> None:
        self._inner, self._core = inner, core

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = self._inner.read(max_bytes, _cap(timeout, self._core.ReadTimeout))
        if getattr(_LIMITS, "deadline", None) is not None:
            _LIMITS.read += len(data)
            if _LIMITS.read > _LIMITS.max_bytes + 64 * 1024:  # headers and framing on top of the body
                raise _TooLarge(f"over {_LIMITS.max_bytes} bytes")
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _cap(timeout, self._core.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        stream = self._inner.start_tls(ssl_context, server_hostname, _cap(timeout, self._core.ConnectTimeout))
        return _DeadlineStream(stream, self._core)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
