"""``edgeslm serve`` (issue #23): a real server process on 127.0.0.1 over the bundled SmolLM2, driven with
the official ``openai`` client (sync, async, streaming) and raw HTTP for the faults.

One module-scoped server (with an API key and a config file) serves most tests; short-lived ones
check what needs a process of its own (refusals at start, SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx2")
jsonschema = pytest.importorskip("jsonschema")

KEY = "test-key-0123456789"
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
LONG = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and the sea."}]


class Server:
    """One ``python -m edgeslm serve`` process and the URL it printed."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeslm", "serve", *args],
                                     stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        self.url = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)/v1", self.output())
            if m:
                self.url = m.group(1)
                try:
                    if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _run_cli(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeslm", "serve", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("serve")
    cfg = d / "serve.toml"
    cfg.write_text("[limits]\nmax_messages = 50\nmax_schema_depth = 16\n")
    s = Server([str(smollm2_path), "--port", "0", "--n-ctx", "2048", "--api-key", KEY, "--config", str(cfg)],
               d / "server.log")
    try:
        yield s.wait_ready()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def _post(server: Server, body: object, *, key: str | None = KEY, raw: bytes | None = None,
          headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{server.url}/v1/chat/completions", content=content, headers=h, timeout=60)


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in r.text
    return err


# ----------------------------------------------------------------------------- the openai client


def test_models_and_health(server: Server, client: openai.OpenAI, smollm2_path: Path) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [smollm2_path.name]
    h = httpx.get(f"{server.url}/health", timeout=10)  # no key needed
    assert h.status_code == 200 and h.json()["status"] == "ok"
    out = server.output()
    assert "llama.cpp" in out and smollm2_path.name in out and "API key required" in out


def test_chat(client: openai.OpenAI, model_id: str) -> None:
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=16, temperature=0, seed=1)
    assert r.object == "chat.completion" and r.model == model_id
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content and c.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 16 and r.usage.prompt_tokens > 0
    extra = r.model_extra or {}
    assert extra.get("escalated") is False


def test_stream(client: openai.OpenAI, model_id: str) -> None:
    stream = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Count to five."}],
                                            max_tokens=12, temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.object == "chat.completion.chunk" and c.model == model_id for c in chunks)


def test_tool_call_required(client: openai.OpenAI, model_id: str) -> None:
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER], tool_choice="required", max_tokens=64, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.tool_calls
    for call in c.message.tool_calls:
        assert call.type == "function" and call.function.name == "get_weather" and call.id
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    assert (r.model_extra or {}).get("confidence") is not None


def test_tool_call_stream(client: openai.OpenAI, model_id: str) -> None:
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=64,
        temperature=0, stream=True)
    calls = [tc for ch in stream if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])


def test_response_format_json_schema(client: openai.OpenAI, model_id: str) -> None:
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Maria is 31. Give her name and age as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        max_tokens=64, temperature=0)
    data = json.loads(r.choices[0].message.content)
    jsonschema.validate(data, PERSON)
    extra = r.model_extra or {}
    assert 0 <= extra["confidence"] <= 1
    assert set(extra["field_confidence"]) == {"/name", "/age"}
    assert extra["schema_support"]["level"] == "exact" and extra["escalated"] is False


def test_response_format_json_object_stream(client: openai.OpenAI, model_id: str) -> None:
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "A JSON object about a cat."}],
        response_format={"type": "json_object"}, max_tokens=64, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert isinstance(json.loads(text), dict)


def test_unservable_schema_is_400_with_check_schema_reason(client: openai.OpenAI, model_id: str) -> None:
    import edgeslm

    schema = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
    reason = edgeslm.check_schema(schema).reason
    assert reason and "no finite JSON value" in reason
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "x"}], max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}})
    assert e.value.status_code == 400
    assert e.value.response.json()["error"]["message"] == reason
    assert e.value.code == "unservable_schema"


def test_async_client(server: Server, model_id: str) -> None:
    async def main() -> None:
        ac = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
        msgs = [{"role": "user", "content": "Name a color."}]
        a, b = await asyncio.gather(
            ac.chat.completions.create(model=model_id, messages=msgs, max_tokens=8, temperature=0),
            ac.chat.completions.create(model=model_id, messages=msgs, max_tokens=32, temperature=0,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "p", "schema": PERSON}}))
        assert a.choices[0].message.content
        jsonschema.validate(json.loads(b.choices[0].message.content), PERSON)
        stream = await ac.chat.completions.create(model=model_id, messages=msgs, max_tokens=8, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts)
        await ac.close()

    asyncio.run(main())


# ----------------------------------------------------------------------------- security and limits


def test_auth(server: Server, model_id: str) -> None:
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert _error(_post(server, body, key=None), 401)["code"] == "invalid_api_key"
    _error(_post(server, body, key="wrong-key"), 401)
    r = httpx.get(f"{server.url}/v1/models", timeout=10)
    _error(r, 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).models.list()


def test_non_loopback_host_needs_a_key(smollm2_path: Path) -> None:
    r = _run_cli([str(smollm2_path), "--host", "0.0.0.0", "--port", "0"])
    assert r.returncode == 2 and "without an API key" in r.stderr and "--api-key" in r.stderr


def test_bad_config_refused_at_start(smollm2_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"escalation": {"base_url": "ftp://x", "model": "m"}}))
    r = _run_cli([str(smollm2_path), "--port", "0", "--config", str(bad)])
    assert r.returncode == 2 and "config file" in r.stderr and "base_url" in r.stderr
    bad.write_text("{not json")
    r = _run_cli([str(smollm2_path), "--port", "0", "--config", str(bad)])
    assert r.returncode == 2 and "not valid JSON" in r.stderr


def test_config_escalation_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeslm.server.config import load_config

    monkeypatch.setenv("SERVE_TEST_KEY", "k")
    p = tmp_path / "c.toml"
    p.write_text('[escalation]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "big"\napi_key_env = "SERVE_TEST_KEY"\n'
                 "min_confidence = 0.5\nbudget = 0.1\ntimeout = 3\nredact = ['\\d{3}-\\d{4}']\n"
                 f'audit_log = "{tmp_path / "audit.jsonl"}"\n[limits]\nmax_messages = 7\n')
    cfg = load_config(p)
    esc = cfg.escalation
    assert cfg.limits.max_messages == 7 and esc.min_confidence == 0.5 and esc.budget == 0.1 and esc.timeout == 3
    assert esc.redact("call 555-1234 now") == "call [REDACTED] now"
    p.write_text('[escalation]\nbase_url = "http://x/v1"\nmodel = "m"\nredact = ["("]\n')
    with pytest.raises(Exception, match="not a valid regular expression"):
        load_config(p)


def test_body_too_large_is_413(server: Server, model_id: str) -> None:
    big = {"model": model_id, "messages": [{"role": "user", "content": "x" * (5 * 2**20)}]}
    try:
        r = _post(server, big)
    except httpx.HTTPError:  # the server may close before the whole body is sent
        pytest.fail("the server closed the connection instead of answering 413")
    assert _error(r, 413)["code"] == "request_too_large"


def test_malformed_and_wrong_types_are_400(server: Server, model_id: str) -> None:
    assert _error(_post(server, None, raw=b'{"model": '), 400)["code"] == "invalid_json"
    _error(_post(server, None, raw=b"[1, 2]"), 400)
    msgs = [{"role": "user", "content": "hi"}]
    for bad, param in [({"messages": "hi"}, "messages"), ({"messages": msgs, "max_tokens": "5"}, "max_tokens"),
                       ({"messages": msgs, "temperature": "hot"}, "temperature"),
                       ({"messages": msgs, "stream": "yes"}, "stream"),
                       ({"messages": msgs, "max_tokens": 10**9}, "max_tokens"),
                       ({"messages": msgs, "logprobs": True}, "logprobs"),
                       ({"messages": [{"role": "wizard", "content": "x"}]}, None),
                       ({"messages": [{"role": "user", "content": 5}]}, None)]:
        err = _error(_post(server, {"model": model_id, **bad}), 400)
        if param:
            assert err["param"] == param, err
    r = _post(server, None, raw=b"{}", headers={"Content-Type": "text/plain"})
    _error(r, 415)


def test_limits_from_config(server: Server, model_id: str) -> None:
    many = [{"role": "user", "content": "hi"}] * 51
    assert _error(_post(server, {"model": model_id, "messages": many}), 400)["code"] == "too_many_messages"
    deep: dict = {"type": "string"}
    for _ in range(20):
        deep = {"type": "array", "items": deep}
    rf = {"type": "json_schema", "json_schema": {"name": "d", "schema": deep}}
    body = {"model": model_id, "messages": [{"role": "user", "content": "x"}], "response_format": rf}
    assert _error(_post(server, body), 400)["code"] == "schema_too_deep"


def test_unknown_model_and_route_are_404(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.code == "model_not_found"
    r = httpx.get(f"{server.url}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    _error(r, 404)
    r = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}", "Host": "evil.example"},
                  timeout=10)
    assert r.status_code == 400  # loopback server: foreign Host headers (DNS rebinding) are refused


def test_no_cors_by_default(server: Server) -> None:
    r = httpx.options(f"{server.url}/v1/chat/completions", timeout=10,
                      headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


# ----------------------------------------------------------------------------- faults


def test_disconnect_mid_stream_frees_the_engine(server: Server, client: openai.OpenAI, model_id: str) -> None:
    body = {"model": model_id, "messages": LONG, "max_tokens": 1500, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(timeout=60) as h, h.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                                                 headers=headers) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # one chunk read, then the connection is dropped
    t0 = time.perf_counter()
    ok = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert ok.choices[0].message.content is not None
    # 1500 tokens would take ~20 s or more here; the stream must have stopped at once
    assert time.perf_counter() - t0 < 6


@pytest.mark.parametrize("kind", ["text", "schema"])
def test_a_client_that_leaves_a_non_streamed_request_frees_the_engine(server: Server, client: openai.OpenAI,
                                                                     model_id: str, kind: str) -> None:
    """Without a stream the server learns of a disconnect by polling: the call stops at its next token
    (a schema request inside its batch too), so the next request does not wait out 1500 tokens."""
    body: dict = {"model": model_id, "messages": LONG, "max_tokens": 1500, "temperature": 0}
    if kind == "schema":
        story = {"type": "object", "properties": {"story": {"type": "string", "minLength": 5000}},
                 "required": ["story"]}
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "s", "schema": story}}
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(timeout=1.0) as h, pytest.raises(httpx.ReadTimeout):
        h.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)  # gives up after 1 s
    t0 = time.perf_counter()
    ok = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert ok.choices[0].message.content is not None
    # 1500 tokens would take ~20 s or more here; the abandoned call must have stopped within a poll
    assert time.perf_counter() - t0 < 6


def test_slow_client_that_never_reads(server: Server, client: openai.OpenAI, model_id: str) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"model": model_id, "messages": LONG, "max_tokens": 100, "stream": True}).encode()
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.2)  # the stream has its turn; this client reads nothing
        t0 = time.perf_counter()
        ok = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4)
        assert ok.choices[0].message.content is not None
        assert time.perf_counter() - t0 < 20
    finally:
        s.close()


def test_sigterm_during_generation_exits_cleanly(smollm2_path: Path, tmp_path: Path) -> None:
    s = Server([str(smollm2_path), "--port", "0", "--n-ctx", "2048"], tmp_path / "log")
    s.wait_ready()
    c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0, timeout=30)
    name = c.models.list().data[0].id
    stream = c.chat.completions.create(model=name, messages=LONG, max_tokens=1500, stream=True, temperature=0)
    first = next(iter(stream))
    assert first.choices
    t0 = time.perf_counter()
    s.proc.send_signal(signal.SIGTERM)
    ended_cleanly = False
    try:
        for _ in stream:
            pass
        ended_cleanly = True  # finished (and [DONE]) before the stop reached it
    except openai.APIError as e:  # the clean error event the server sends when it stops a stream
        assert "shutting down" in str(e)
        ended_cleanly = True
    assert ended_cleanly
    assert s.proc.wait(15) == 0, s.output()
    assert time.perf_counter() - t0 < 10
    assert "stopped" in s.output() and "Traceback" not in s.output()


# ----------------------------------------------------------------------------- the async API, in process


def test_async_model(smollm2) -> None:
    import edgeslm

    async def main() -> None:
        am = edgeslm.AsyncModel(smollm2)
        msgs = [{"role": "user", "content": "hi"}]
        order: list[str] = []

        async def call(tag: str, **kw: object) -> object:
            r = await am.chat(msgs, max_tokens=4, temperature=0, **kw)
            order.append(tag)
            return r

        ticks = 0

        async def ticker() -> None:  # the event loop keeps running while the engine works
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        t = asyncio.create_task(ticker())
        await asyncio.gather(*(call(str(i)) for i in range(3)))
        x = await am.extract("Maria is 31.", PERSON)
        stream = await am.chat(msgs, max_tokens=50, stream=True)
        async for _chunk in stream:
            break
        await stream.aclose()
        assert stream.done
        after = await am.chat(msgs, max_tokens=2)
        t.cancel()
        assert order == ["0", "1", "2"] and ticks > 5
        jsonschema.validate(x.data, PERSON)
        assert after.text is not None

    asyncio.run(main())
