"""The ASGI app of ``edgeslm serve`` (Starlette): OpenAI-shaped endpoints over one :class:`AsyncModel`.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``.
Errors are always ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status, never
a traceback. edgeslm's extras ride in extension fields of the completion: ``confidence``,
``field_confidence`` (JSON replies), ``escalated`` (+ ``escalation_trigger``), ``schema_support``.

Over ~450 lines on purpose: the OpenAI-compatible routes, their request checks and the event stream
are one HTTP surface.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import (
    AdapterError,
    ContextLengthError,
    EdgeSLMError,
    EscalationError,
    ExtractionFailed,
    InvalidRequestError,
    ModelClosedError,
    SchemaError,
    TemplateError,
    ToolCallError,
)
from ..api.aio import AsyncChatStream, AsyncModel
from .config import Limits

#: How often a non-streamed request checks whether its client is still there.
DISCONNECT_POLL_S = 0.25

__all__ = ["ServerState", "create_app"]

log = logging.getLogger("edgeslm.serve")

#: What each error class becomes: (HTTP status, OpenAI error type, code).
_STATUS: list[tuple[type[BaseException], int, str, str]] = [
    (ContextLengthError, 400, "invalid_request_error", "context_length_exceeded"),
    (SchemaError, 400, "invalid_request_error", "invalid_schema"),
    (ToolCallError, 400, "invalid_request_error", "tool_call_error"),
    (AdapterError, 400, "invalid_request_error", "adapter_error"),
    (TemplateError, 400, "invalid_request_error", "template_error"),
    (InvalidRequestError, 400, "invalid_request_error", "invalid_value"),
    (ModelClosedError, 503, "server_error", "model_unavailable"),
    (ExtractionFailed, 500, "server_error", "extraction_failed"),
    (EscalationError, 502, "server_error", "escalation_failed"),
]


class ApiError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def api_error(exc: BaseException) -> ApiError:
    """The :class:`ApiError` for any exception: edgeslm's errors by class, wrong types 400, else 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, EdgeSLMError):
        msg = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
        for cls, status, kind, code in _STATUS:
            if isinstance(exc, cls):
                return ApiError(status, msg, type=kind, code=code)
        return ApiError(500, msg, type="server_error", code=type(exc).__name__)
    if isinstance(exc, (TypeError, ValueError)):  # the Model's argument checks: a wrong type or value
        return ApiError(400, str(exc) or type(exc).__name__, code="invalid_type")
    log.error("internal error", exc_info=exc)
    return ApiError(500, "internal server error (see the server's log)", type="server_error", code="internal_error")


@dataclass
class ServerState:
    """What the app serves: one model (and its adapters), the key and the limits."""

    am: AsyncModel
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    streams: set[AsyncChatStream] = field(default_factory=set)
    stopping: bool = False
    batch_size: int | None = None

    @property
    def names(self) -> dict[str, str | None]:
        """Served model name -> adapter (``None``: the base weights)."""
        m = self.am.model
        out: dict[str, str | None] = {m.name: None}
        for a in m.adapters:
            out[f"{m.name}:{a}"] = a
        return out

    def stop(self) -> None:
        """Begin shutting down: refuse calls not started yet, end running streams with a clean error."""
        if self.stopping:
            return
        self.stopping = True
        err = ModelClosedError("the server is shutting down", hint="retry against a running server")
        self.am.refuse_new(err)
        for s in list(self.streams):
            s.cancel(err)


# ----------------------------------------------------------------------------- request checks


def _check_auth(request: Request, state: ServerState) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), state.api_key.encode())
    if not ok:
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "the request body must be JSON with 'Content-Type: application/json'",
                       code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes",
                       code="request_too_large")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
    try:
        body = json.loads(bytes(buf))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _type_error(param: str, want: str, value: Any) -> ApiError:
    return ApiError(400, f"'{param}' must be {want}, not {type(value).__name__}", param=param, code="invalid_type")


def _get(body: dict[str, Any], key: str, kinds: type | tuple[type, ...], want: str) -> Any:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise _type_error(key, want, v)
    if not isinstance(v, kinds):
        raise _type_error(key, want, v)
    return v


def _schema_bounds(schema: Any, param: str, lim: Limits) -> None:
    size = len(json.dumps(schema, ensure_ascii=False, default=str))
    if size > lim.max_schema_bytes:
        raise ApiError(400, f"'{param}' is {size} bytes of JSON, over the limit of {lim.max_schema_bytes}",
                       param=param, code="schema_too_large")
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > lim.max_schema_depth:
            raise ApiError(400, f"'{param}' is nested deeper than {lim.max_schema_depth} levels",
                           param=param, code="schema_too_deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _check_servable(schema: Any, param: str) -> Any:
    from ..decoding.support import check_schema

    sup = check_schema(schema)
    if not sup:
        raise ApiError(400, sup.reason or "this schema cannot be served", param=param, code="unservable_schema")
    return sup


@dataclass
class ChatRequest:
    """A checked ``/v1/chat/completions`` request."""

    name: str
    messages: list[Any]
    kwargs: dict[str, Any]
    stream: bool = False
    include_usage: bool = True
    schema: Any = None
    support: Any = None


def parse_chat(body: dict[str, Any], state: ServerState) -> ChatRequest:
    """Check a request's fields and types against the limits; the Model checks the rest."""
    lim = state.limits
    m = state.am.model
    names = state.names
    name = _get(body, "model", str, "a string")
    if name is None:
        name = m.name
    if name not in names:
        raise ApiError(404, f"the model {name!r} does not exist here; served: {sorted(names)}",
                       param="model", code="model_not_found")
    adapter = names[name]
    ext_adapter = _get(body, "adapter", str, "a string")
    if ext_adapter is not None:
        if ext_adapter not in m.adapters:
            raise ApiError(404, f"the adapter {ext_adapter!r} does not exist here; served: {list(m.adapters)}",
                           param="adapter", code="model_not_found")
        adapter = ext_adapter
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _type_error("messages", "a list of message objects", messages)
    if not messages:
        raise ApiError(400, "'messages' is empty", param="messages", code="invalid_value")
    if len(messages) > lim.max_messages:
        raise ApiError(400, f"{len(messages)} messages is over the limit of {lim.max_messages}",
                       param="messages", code="too_many_messages")
    if not all(isinstance(x, dict) for x in messages):
        raise ApiError(400, "every message must be an object with 'role' and 'content'", param="messages",
                       code="invalid_type")
    kw: dict[str, Any] = {}
    if adapter is not None:
        kw["adapter"] = adapter
    n = _get(body, "n", int, "an integer")
    if n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", param="n", code="unsupported_value")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs", code="unsupported_value")
    for key in ("presence_penalty", "frequency_penalty"):
        if _get(body, key, (int, float), "a number") not in (None, 0):
            raise ApiError(400, f"'{key}' is not supported (only 0)", param=key, code="unsupported_value")
    mt = _get(body, "max_completion_tokens", int, "an integer")
    if mt is None:
        mt = _get(body, "max_tokens", int, "an integer")
    if mt is not None and not 1 <= mt <= m.n_ctx:
        raise ApiError(400, f"max_tokens must be between 1 and the context window ({m.n_ctx}), not {mt}",
                       param="max_tokens", code="invalid_value")
    kw["max_tokens"] = mt
    t = _get(body, "temperature", (int, float), "a number")
    if t is not None:
        if not 0 <= t <= 2:
            raise ApiError(400, f"temperature must be within [0, 2], not {t}", param="temperature",
                           code="invalid_value")
        kw["temperature"] = float(t)
    p = _get(body, "top_p", (int, float), "a number")
    if p is not None:
        if not 0 < p <= 1:
            raise ApiError(400, f"top_p must be within (0, 1], not {p}", param="top_p", code="invalid_value")
        kw["top_p"] = float(p)
    k = _get(body, "top_k", int, "an integer")
    if k is not None:
        kw["top_k"] = k
    seed = _get(body, "seed", int, "an integer")
    if seed is not None:
        kw["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 16:
            raise _type_error("stop", "a string or a list of at most 16 strings", stop)
        kw["stop"] = stop
    stream = _get(body, "stream", bool, "true or false") or False
    opts = _get(body, "stream_options", dict, "an object") or {}
    include_usage = bool(opts.get("include_usage", True))
    tools = _get(body, "tools", list, "a list of tools")
    if tools:
        if len(tools) > lim.max_tools:
            raise ApiError(400, f"{len(tools)} tools is over the limit of {lim.max_tools}", param="tools",
                           code="too_many_tools")
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise ApiError(400, f"tools[{i}] must be {{'type': 'function', 'function': {{'name', 'parameters'}}}}",
                               param=f"tools[{i}]", code="invalid_type")
            if fn.get("parameters") is not None:
                _schema_bounds(fn["parameters"], f"tools[{i}].function.parameters", lim)
        kw["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, (str, dict)):
            raise _type_error("tool_choice", "a string or an object", choice)
        kw["tool_choice"] = choice
    par = _get(body, "parallel_tool_calls", bool, "true or false")
    if par is not None:
        kw["parallel_tool_calls"] = par
    req = ChatRequest(name=name, messages=messages, kwargs=kw, stream=stream, include_usage=include_usage)
    rf = _get(body, "response_format", dict, "an object")
    if rf is not None:
        kind = rf.get("type")
        if kind == "json_schema":
            spec = rf.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
                raise ApiError(400, "response_format json_schema needs {'name': ..., 'schema': {...}}",
                               param="response_format", code="invalid_value")
            req.schema = spec["schema"]
        elif kind == "json_object":
            req.schema = {"type": "object"}
        elif kind != "text":
            raise ApiError(400, f"unknown response_format type {kind!r}: use text, json_object or json_schema",
                           param="response_format", code="invalid_value")
        if req.schema is not None:
            if tools and choice != "none":
                raise ApiError(400, "tools and a JSON response_format cannot be combined", param="response_format",
                               code="invalid_value")
            if stop:
                raise ApiError(400, "stop cannot be combined with a JSON response_format", param="stop",
                               code="invalid_value")
            _schema_bounds(req.schema, "response_format.json_schema.schema", lim)
            req.support = _check_servable(req.schema, "response_format")
            kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": req.schema}}
    return req


# ----------------------------------------------------------------------------- handlers


def _support_dict(sup: Any) -> dict[str, Any] | None:
    if sup is None:
        return None
    return {"level": sup.level, "unenforced": list(sup.unenforced)}


def _json_detail(m: Any, req: ChatRequest) -> tuple[Any, dict[str, float]]:
    """A JSON reply with the confidence of each field (the path of ``Model.chat(response_format=...)``
    without escalation, keeping what it drops), on *m*: the model with the request's adapter, or
    its view of one sequence of a batch."""
    from ..api.extract import prepare_schema
    from ..api.results import ChatResult
    from ..decoding.sampling import SamplingParams

    kw = req.kwargs
    plan = prepare_schema(req.schema)
    params = SamplingParams(kw.get("temperature", 0.7), kw.get("top_p", 0.95), kw.get("top_k", 40), kw.get("seed"))
    run = m._extract_run(req.messages, plan, kw.get("max_tokens"), params, None)
    attempt, usage = run.last, run.usage
    result = ChatResult(text=attempt.text, finish_reason="stop", usage=usage, model=m.name,
                        confidence=attempt.confidence)
    return result, dict(attempt.fields or {})


def _completion(result: Any, req: ChatRequest, fields: dict[str, float] | None) -> dict[str, Any]:
    out = result.to_dict()
    if not result.escalated:
        out["model"] = req.name
    out["confidence"] = result.confidence
    out["escalated"] = result.escalated
    if result.escalation_trigger:
        out["escalation_trigger"] = result.escalation_trigger
    if fields is not None:
        out["field_confidence"] = fields
    if req.support is not None:
        out["schema_support"] = _support_dict(req.support)
    return out


async def chat_completions(request: Request) -> Response:
    try:
        return await _chat_completions(request)
    except Exception as exc:
        return api_error(exc).response()


async def _chat_completions(request: Request) -> Response:
    state: ServerState = request.app.state.edgeslm
    _check_auth(request, state)
    body = await _read_json(request, state.limits.max_body_bytes)
    req = parse_chat(body, state)
    if state.stopping:
        raise api_error(ModelClosedError("the server is shutting down", hint="retry against a running server"))
    if state.am.waiting >= state.limits.max_queue:
        raise ApiError(503, f"the server is busy ({state.am.waiting} requests waiting)", type="server_error",
                       code="server_busy", headers={"Retry-After": "1"})
    am = state.am
    if req.stream:
        s = await am.chat(req.messages, stream=True, **req.kwargs)
        return _sse(s, req, state)
    gone = threading.Event()  # set when the client disconnects: the call stops at its next token
    if req.schema is not None and am.model.escalation is None:
        # decoded together with the other schema requests running or waiting (one batch per turn)
        call = am.call_batched(lambda m: _cancellable(gone, _json_detail, m, req), adapter=req.kwargs.get("adapter"),
                               batch_size=state.batch_size)
    else:
        call = am.call(lambda m: (_cancellable(gone, m.chat, req.messages, **req.kwargs), None))
    result, fields = await _until_disconnected(request, call, gone)
    return JSONResponse(_completion(result, req, fields))


def _cancellable(gone: threading.Event, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in the worker thread that runs it, stopped once *gone* is set."""
    from ..decoding.loop import cancel_on

    with cancel_on(gone):
        return fn(*args, **kwargs)


async def _until_disconnected(request: Request, call: Awaitable[Any], gone: threading.Event) -> Any:
    """Await *call* while watching the client: one that disconnects sets *gone*, so a request nobody
    will read stops generating (or never starts, when it was still waiting for its turn)."""

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        gone.set()

    watcher = asyncio.ensure_future(watch())
    try:
        return await call
    finally:
        watcher.cancel()


def _sse(s: AsyncChatStream, req: ChatRequest, state: ServerState) -> Response:
    from sse_starlette.sse import EventSourceResponse

    state.streams.add(s)
    if state.stopping:
        s.cancel(ModelClosedError("the server is shutting down"))
    created = int(time.time())

    async def events() -> AsyncIterator[str]:
        first = True
        try:
            async for chunk in s:
                d = chunk.to_dict()
                d["model"] = req.name
                d["created"] = created
                if first:  # OpenAI's first chunk names the role
                    d["choices"][0]["delta"] = {"role": "assistant", **d["choices"][0]["delta"]}
                    first = False
                if chunk.confidence is not None:
                    d["confidence"] = chunk.confidence
                if chunk.finish_reason is not None:
                    if req.support is not None:
                        d["schema_support"] = _support_dict(req.support)
                    if not req.include_usage:
                        d.pop("usage", None)
                yield json.dumps(d)
            yield "[DONE]"
        except Exception as exc:  # after the 200: a clean error event, then the end
            yield json.dumps(api_error(exc).body())
            yield "[DONE]"
        finally:
            state.streams.discard(s)
            s.close_soon()  # a client that left: stop generating at once (the engine frees itself)

    return EventSourceResponse(events(), send_timeout=state.limits.send_timeout_s, ping=15,
                               shutdown_event=_anyio_event(), shutdown_grace_period=5.0)


def _anyio_event() -> Any:
    import anyio

    return anyio.Event()


async def models(request: Request) -> Response:
    state: ServerState = request.app.state.edgeslm
    _check_auth(request, state)
    return JSONResponse({"object": "list", "data": [_model_card(n, state) for n in state.names]})


async def model_info(request: Request) -> Response:
    state: ServerState = request.app.state.edgeslm
    _check_auth(request, state)
    name = request.path_params["name"]
    if name not in state.names:
        raise ApiError(404, f"the model {name!r} does not exist here", param="model", code="model_not_found")
    return JSONResponse(_model_card(name, state))


def _model_card(name: str, state: ServerState) -> dict[str, Any]:
    m = state.am.model
    return {"id": name, "object": "model", "created": 0, "owned_by": "edgeslm", "backend": m.backend,
            "device": m.device, "n_ctx": m.n_ctx, "adapter": state.names[name], "tool_format": m.tool_format}


async def health(request: Request) -> Response:
    state: ServerState = request.app.state.edgeslm
    if state.stopping or state.am.model.closed:
        return JSONResponse({"status": "stopping"}, status_code=503)
    return JSONResponse({"status": "ok", "model": state.am.model.name, "waiting": state.am.waiting,
                         "batches": state.am.batch_stats})


async def _on_api_error(request: Request, exc: Exception) -> Response:
    return api_error(exc).response()


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None,
                    headers=dict(exc.headers or {}) or None).response()


def create_app(model: Any, *, api_key: str | None = None, cors: list[str] | None = None,
               limits: Limits | None = None, allowed_hosts: list[str] | None = None,
               batch_size: int | None = None) -> Starlette:
    """The ASGI app serving *model* (an :class:`~edgeslm.Model` or :class:`AsyncModel`), for
    ``uvicorn`` or embedding. ``allowed_hosts``: the Host headers answered (``None``: any; the
    server passes the loopback names when it binds to loopback, against DNS rebinding).
    ``batch_size``: the most ``response_format`` requests decoded together (``None``: chosen as
    ``extract_many`` chooses; 1: one at a time)."""
    from starlette.middleware.cors import CORSMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    am = model if isinstance(model, AsyncModel) else AsyncModel(model)
    middleware = []
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    if cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model_info, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={ApiError: _on_api_error, EdgeSLMError: _on_api_error,
                                        HTTPException: _on_http, Exception: _on_api_error})
    app.state.edgeslm = ServerState(am=am, api_key=api_key, limits=limits or Limits(), batch_size=batch_size)
    return app

