"""Hostile escalation targets and careless requests (issue #24 items 2, 3 and 8), against a real
HTTP server on 127.0.0.1 (tests/_cloud_standin.py) through edgeslm.OpenAICompatible: redaction of
everything that leaves in the form it leaves, one deadline for connect, reads and retries (no
thread or socket after it), no redirects unless asked, a cap on what a target may return, and an
audit log that holds no user text. Ends with a property-based test over random server behaviour."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import edgeslm
from edgeslm.api.escalate import chat_request, extraction_request
from edgeslm.api.results import ToolCall
from edgeslm.escalation.policy import EscalationRequest

from ._cloud_standin import CloudStandin, reply_content

CONTACT = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
    "required": ["name", "email"],
    "additionalProperties": False,
}
NAMES = ("José Pérez", "Zoë Ångström", "Łukasz 😀")
TEXT = "José Pérez (jose@example.com) wants the invoice resent."
ANSWER = '{"name": "[NAME]", "email": "[EMAIL]"}'
SLACK = 2.5  # seconds past a deadline a loaded 2-core machine may take to hand back


def redact_names(s: str) -> str:
    for n in NAMES:
        s = s.replace(n, "[NAME]")
    return s.replace("jose@example.com", "[EMAIL]")


@pytest.fixture(scope="module", autouse=True)
def _openai() -> None:
    pytest.importorskip("openai")


@pytest.fixture
def cloud():
    with CloudStandin(reply_content(ANSWER)) as c:
        yield c


def target(cloud: CloudStandin, **kw: Any) -> edgeslm.OpenAICompatible:
    return edgeslm.OpenAICompatible(cloud.url, "standin-large", **kw)


def _escalation_threads() -> int:
    return sum(t.name == "edgeslm-escalation" for t in threading.enumerate())


def _wait(cond, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _sent_text(cloud: CloudStandin) -> str:
    """Every request body as it left, and as its JSON means it (escapes written out)."""
    raws = [r["raw"].decode("utf-8") for r in cloud.requests]
    return "\n".join(raws + [json.dumps(json.loads(r), ensure_ascii=False) for r in raws])


# ----------------------------------------------------------------------------------------- redaction


def test_redact_sees_text_as_it_leaves_escaped_examples_names_and_tool_arguments(cloud: CloudStandin,
                                                                                 tmp_path: Path) -> None:
    """Issue #24: a few-shot output was serialised with non-ASCII escaped (Jos\\u00e9) before redact ran,
    and a message's name was not redacted: the target and record_to got the names."""
    data = tmp_path / "data.jsonl"
    esc = edgeslm.Escalation(target(cloud), on_invalid=True, redact=redact_names, record_to=data)
    examples = [("Zoë Ångström called.", {"name": "Zoë Ångström", "email": ""}),
                {"input": "From Łukasz 😀", "output": {"name": "Łukasz 😀", "email": ""}}]
    req = extraction_request(TEXT, CONTACT, examples=examples)
    req.trigger = "invalid"
    assert esc.escalate(req).escalated
    # a chat whose history has a name field and tool calls whose arguments were serialised escaped
    call = ToolCall("call_1", "lookup", {"who": "José Pérez", "note": "Zoë Ångström"})
    history = [
        {"role": "user", "name": "José Pérez", "content": "find Zoë Ångström"},
        {"role": "assistant", "content": None, "tool_calls": [call.to_dict()]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"found": "Łukasz 😀"})},
    ]
    assert "\\u00e9" in call.to_dict()["function"]["arguments"]  # escaped, as json.dumps writes it
    req = chat_request(history)
    req.trigger = "invalid"
    assert esc.escalate(req).escalated
    sent = _sent_text(cloud) + data.read_text(encoding="utf-8")
    assert all(n not in sent for n in NAMES) and "jose@example.com" not in sent and "[NAME]" in sent
    tool_args = json.loads(cloud.bodies()[1]["messages"][1]["tool_calls"][0]["function"]["arguments"])
    assert tool_args == {"who": "[NAME]", "note": "[NAME]"}  # still the JSON the target expects
    assert cloud.bodies()[1]["messages"][1]["tool_calls"][0]["id"] == "call_1"  # ids are not user text


def test_the_audit_log_holds_no_text_a_server_echoed(cloud: CloudStandin, tmp_path: Path) -> None:
    """Issue #24: the audit log's error (without audit_content) carried user text echoed by the server."""
    audit = tmp_path / "audit.jsonl"
    cloud.behaviour = "echo400"
    req = extraction_request(TEXT, CONTACT)
    req.trigger = "invalid"
    out = edgeslm.Escalation(target(cloud), redact=None, audit_log=audit).escalate(req)
    assert not out.escalated and out.error_kind == "http" and "José" in (out.error or "")  # the app's own copy
    line = json.loads(audit.read_text(encoding="utf-8").splitlines()[-1])
    assert line["error"] == "HTTP 400 from the target" and "José" not in json.dumps(line, ensure_ascii=False)
    # with audit_content the full error is kept, redacted
    out = edgeslm.Escalation(target(cloud), redact=redact_names, audit_log=audit,
                             audit_content=True).escalate(req)
    line = json.loads(audit.read_text(encoding="utf-8").splitlines()[-1])
    assert "invalid input" in line["error"] and "[NAME]" in line["error"]
    assert "José" not in json.dumps(line, ensure_ascii=False)
    # an answer that fails the schema: the validation message (which quotes the answer) stays out
    cloud.behaviour = "answer"
    cloud.answer = reply_content('{"name": 5, "email": "José Pérez"}')
    edgeslm.Escalation(target(cloud), audit_log=audit).escalate(req)
    line = json.loads(audit.read_text(encoding="utf-8").splitlines()[-1])
    assert line["error"] == "the target's answer does not match the schema" and line["error_kind"] == "invalid_answer"


# ----------------------------------------------------------------------------------------- one deadline


@pytest.mark.timeout(120)
def test_a_server_that_drips_bytes_cannot_outlive_the_deadline(cloud: CloudStandin) -> None:
    """Issue #24: the timeout was per read, so a server sending a byte every half second kept the
    worker thread and its socket forever (20 calls: 20 threads, 20 sockets)."""
    cloud.behaviour, cloud.delay = "drip", 0.2
    esc = edgeslm.Escalation(target(cloud), on_invalid=True, timeout=1.0)
    for _ in range(4):
        req = extraction_request(TEXT, CONTACT)
        req.trigger = "invalid"
        t = time.monotonic()
        out = esc.escalate(req)
        took = time.monotonic() - t
        assert out.error_kind == "timeout" and took < 1.0 + SLACK, (out.error, took)
        assert _wait(lambda: _escalation_threads() == 0, 0.5), "the hand-off's thread outlived its deadline"
    assert len(cloud.requests) == 4
    assert _wait(lambda: cloud.open_connections == 0, 2.0), f"{cloud.open_connections} connections left open"


@pytest.mark.timeout(120)
def test_retries_happen_only_before_the_deadline_and_every_try_is_counted(cloud: CloudStandin,
                                                                         tmp_path: Path) -> None:
    """Issue #24: with max_retries=2 and 429 Retry-After: 5, the worker sent two more requests after the
    caller was told "timeout", and the audit log counted the bytes of one."""
    audit = tmp_path / "audit.jsonl"
    cloud.behaviour, cloud.status, cloud.headers = "status", 429, {"Retry-After": "5"}
    esc = edgeslm.Escalation(target(cloud, max_retries=2), on_invalid=True, timeout=1.5, audit_log=audit)
    req = extraction_request(TEXT, CONTACT)
    req.trigger = "invalid"
    t = time.monotonic()
    out = esc.escalate(req)
    assert out.error_kind == "http" and "429" in (out.error or "") and time.monotonic() - t < 1.5 + SLACK
    time.sleep(1.0)
    assert len(cloud.requests) == 1  # a wait past the deadline is not waited: no request after it
    # a short Retry-After is honoured, and the audit counts every try's bytes
    cloud.status, cloud.headers = 503, {"Retry-After": "0.1"}
    out = esc.escalate(req)
    assert len(cloud.requests) == 4 and out.error_kind == "http"
    line = json.loads(audit.read_text().splitlines()[-1])
    assert line["bytes_sent"] == sum(len(r["raw"]) for r in cloud.requests[1:]) == out.bytes_sent
    # a success on a retry
    cloud.headers = {"Retry-After": "0.3"}
    threading.Timer(0.1, lambda: setattr(cloud, "behaviour", "answer")).start()
    out = esc.escalate(req)
    assert out.escalated and len(cloud.requests) == 6, (out.error, len(cloud.requests))


def test_redirects_are_not_followed_unless_asked(cloud: CloudStandin) -> None:
    """Issue #24: a 307 to another host/port was followed and the (redacted) body sent there."""
    with CloudStandin(reply_content(ANSWER)) as elsewhere:
        cloud.behaviour, cloud.status = "status", 307
        cloud.headers = {"Location": f"{elsewhere.url}/chat/completions"}
        req = extraction_request(TEXT, CONTACT)
        req.trigger = "invalid"
        out = edgeslm.Escalation(target(cloud), on_invalid=True).escalate(req)
        assert not out.escalated and out.error_kind == "http" and "307" in (out.error or "")
        assert elsewhere.requests == []
        out = edgeslm.Escalation(target(cloud, follow_redirects=True), on_invalid=True).escalate(req)
        assert out.escalated and len(elsewhere.requests) == 1


# ----------------------------------------------------------------------------------------- size


def test_an_answer_over_the_cap_is_not_used_and_the_result_says_so(cloud: CloudStandin) -> None:
    """Issue #24: a 50 MB string that satisfied the schema was accepted as name."""
    req = extraction_request(TEXT, CONTACT)
    req.trigger = "invalid"
    cloud.behaviour, cloud.huge_bytes = "huge", 2 * 2**20
    out = edgeslm.Escalation(target(cloud), on_invalid=True).escalate(req)
    assert not out.escalated and out.error_kind == "invalid_answer" and "max_answer_bytes" in (out.error or "")
    out = edgeslm.Escalation(target(cloud), on_invalid=True, max_answer_bytes=3 * 2**20).escalate(req)
    assert out.escalated and len(out.data["name"]) == 2 * 2**20
    # the HTTP reply itself is read no further than max_response_bytes
    out = edgeslm.Escalation(target(cloud, max_response_bytes=2**20), on_invalid=True).escalate(req)
    assert not out.escalated and "max_response_bytes" in (out.error or "")
    # a plain callable target is held to the same cap
    big = edgeslm.Escalation(lambda r: {"name": "x" * (50 * 2**20), "email": "e"}, on_invalid=True)
    out = big.escalate(req)
    assert not out.escalated and "max_answer_bytes=1,048,576" in (out.error or "")
    with pytest.raises(edgeslm.InvalidRequestError, match="max_answer_bytes"):
        edgeslm.Escalation(lambda r: "{}", max_answer_bytes=0)
    with pytest.raises(edgeslm.InvalidRequestError, match="max_response_bytes"):
        edgeslm.OpenAICompatible(cloud.url, "m", max_response_bytes=-1)


# ----------------------------------------------------------------------------------------- property


def test_any_server_behaviour_keeps_the_contract(tmp_path: Path) -> None:
    """Random status codes, bodies, headers, delays and redirects: escalate() never raises, returns
    within the deadline, leaves no thread behind, never sends more than 1 + max_retries requests,
    uses an answer only when it matches the schema, and its audit line holds no user text."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    bodies = st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"", b"{}", b"null", b"[]", b'{"choices": []}', b'{"choices": [{"message": null}]}',
                         b'{"choices": [{"message": {"content": "{\\"name\\": \\"a\\", \\"email\\": \\"b\\"}"},'
                         b' "finish_reason": "stop"}]}',
                         b'{"choices": [{"message": {"content": "not json"}, "finish_reason": "stop"}]}',
                         b'{"choices": [{"message": {"content": "{}"}, "finish_reason": "length"}]}',
                         b'{"error": {"message": "bad input Jos\\u00e9 P\\u00e9rez"}}']),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=8).map(lambda v: json.dumps(v).encode()),
    )
    behaviours = st.fixed_dictionaries({
        "status": st.sampled_from([200, 200, 200, 301, 307, 400, 401, 404, 408, 429, 500, 503]),
        "body": bodies,
        "retry_after": st.sampled_from([None, "0", "0.05", "1", "30", "soon", "-1"]),
        "delay": st.sampled_from([0.0, 0.0, 0.05, 0.4]),
        "drip": st.booleans(),
        "retries": st.integers(0, 2),
    })
    audit = tmp_path / "audit.jsonl"
    with CloudStandin() as cloud, CloudStandin(reply_content(ANSWER)) as elsewhere:
        tgt = target(cloud)

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(b=behaviours)
        def check(b: dict[str, Any]) -> None:
            cloud.requests.clear()
            elsewhere.requests.clear()
            cloud.status, cloud.error_body, cloud.status_delay = b["status"], b["body"], b["delay"]
            cloud.delay = 0.05  # drip
            cloud.headers = {}
            if b["retry_after"] is not None:
                cloud.headers["Retry-After"] = b["retry_after"]
            if b["status"] in (301, 307):
                cloud.headers["Location"] = f"{elsewhere.url}/chat/completions"
            cloud.behaviour = "drip" if b["drip"] else "status"
            timeout = 0.6
            tgt.max_retries = b["retries"]
            esc = edgeslm.Escalation(tgt, on_invalid=True, timeout=timeout, audit_log=audit)
            req = extraction_request(TEXT, CONTACT)
            req.trigger = "invalid"
            t = time.monotonic()
            out = esc.escalate(req)  # never raises
            assert time.monotonic() - t < timeout + SLACK
            assert _wait(lambda: _escalation_threads() == 0, 0.5)
            assert len(cloud.requests) <= 1 + b["retries"] and elsewhere.requests == []
            if out.escalated:
                assert out.data == {"name": "a", "email": "b"}
            else:
                assert out.error and out.error_kind in ("timeout", "connection", "http", "invalid_answer", "target")
            line = json.loads(audit.read_text(encoding="utf-8").splitlines()[-1])
            assert "José" not in json.dumps(line, ensure_ascii=False) and "Jos\\u00e9" not in json.dumps(line)

        check()
        assert cloud.open_connections <= 1  # at most the one kept alive for the next hand-off
        tgt.close()
        assert _wait(lambda: cloud.open_connections == 0, 3.0)
    assert hypothesis is not None


def test_a_deadline_set_on_the_request_is_the_one_the_target_keeps() -> None:
    """A plain callable sees the absolute deadline it has (time.monotonic())."""
    seen: list[EscalationRequest] = []
    esc = edgeslm.Escalation(lambda r: (seen.append(r), ANSWER)[1], on_invalid=True, timeout=3.0)
    req = extraction_request(TEXT, CONTACT)
    req.trigger = "invalid"
    t = time.monotonic()
    assert esc.escalate(req).escalated
    assert seen[0].deadline is not None and t + 3.0 - 0.5 < seen[0].deadline <= time.monotonic() + 3.0
