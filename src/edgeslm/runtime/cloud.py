"""An escalation target that speaks the OpenAI chat-completions API (a frontier API, vLLM, llama.cpp's
server...), through the official ``openai`` package, imported when the first target is created
(never by ``import edgeslm``).

Extraction goes out with ``response_format={"type": "json_schema", ...}``; tool calls with
``tools=`` (and ``tool_choice`` / ``parallel_tool_calls`` when set). The reply is parsed into a
:class:`~edgeslm.runtime.escalation.CloudAnswer`; :class:`~edgeslm.Escalation` validates it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .._errors import BackendUnavailableError, EscalationError, InvalidRequestError
from .escalation import CloudAnswer, EscalationRequest

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
    properties required). ``max_retries`` is the openai client's own retry count (0: one try).
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
        self._client: Any = None
        self._lock = threading.Lock()
        self.client()  # import openai now, not on the first hand-off under its timeout (opens no socket)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICompatible(base_url={self.base_url!r}, model={self.model!r})"

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
                self._client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self._api_key or NO_KEY,
                    max_retries=self.max_retries,
                    default_headers=self.extra_headers or None,
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
        """Send one request; raise the openai error on failure, :class:`EscalationError` on an unusable reply."""
        try:
            raw = self.client().chat.completions.with_raw_response.create(**self.body(request), timeout=request.timeout)
        except Exception as exc:
            req = getattr(exc, "request", None)
            if req is not None:  # what the audit log reports as sent
                exc.bytes_sent = _body_size(req)  # type: ignore[attr-defined]
            raise
        sent = _body_size(raw.http_request)
        try:
            received = len(raw.content)
        except Exception:
            received = None
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

