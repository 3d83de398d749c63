"""edgeslm.teach and `edgeslm teach`: a teacher on a real HTTP chat-completions stand-in (127.0.0.1) labels
texts; the dataset lines match Escalation(record_to=...), budgets stop the run, reruns resume without paying
twice, and a broken input or teacher is reported before (or without) losing anything."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import edgeslm
from edgeslm.api.escalate import extraction_request
from edgeslm.cli import main
from edgeslm.decoding.normalize import make_validator
from edgeslm.distill.teach import MAX_CONSECUTIVE_FAILURES

from ._cloud_standin import CloudStandin

CONTACT = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
    "required": ["name", "email"],
    "additionalProperties": False,
}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
TEXTS = [f"Person {i} writes from person{i}@example.com about order {100 + i}." for i in range(6)]


def mask_email(s: str) -> str:
    return EMAIL.sub("[EMAIL]", s)


def label(body: dict[str, Any]) -> dict[str, Any]:
    """The stand-in teacher: the person named in the last user message (the e-mail as it arrived)."""
    text = body["messages"][-1]["content"]
    m = re.search(r"Person (\d+)", text)
    email = EMAIL.search(text)
    return {"content": json.dumps({"name": f"Person {m.group(1) if m else '?'}",
                                   "email": email.group(0) if email else "[EMAIL]"})}


@pytest.fixture(scope="module", autouse=True)
def _warm_imports() -> None:
    pytest.importorskip("openai")
    make_validator(CONTACT)


@pytest.fixture
def cloud():
    with CloudStandin(label) as c:
        yield c


def teacher(cloud: CloudStandin, **kw: Any) -> edgeslm.OpenAICompatible:
    return edgeslm.OpenAICompatible(cloud.url, "standin-large", **kw)


def asked(cloud: CloudStandin) -> Counter[str]:
    """How often each text reached the server (its last user message)."""
    return Counter(b["messages"][-1]["content"] for b in cloud.bodies())


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(s) for s in path.read_text(encoding="utf-8").splitlines()]


def done_lines(out: Path) -> list[dict[str, Any]]:
    return lines(out.with_name(out.name + ".done"))


# ----------------------------------------------------------------------------------------- labels


def test_labels_are_record_to_lines_that_match_the_schema(cloud: CloudStandin, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    report = edgeslm.teach(TEXTS[:3], CONTACT, teacher=teacher(cloud), out=out, redact=mask_email)
    assert isinstance(report, edgeslm.TeachReport)
    assert (report.labeled, report.skipped, report.failed, report.requests) == (3, 0, [], 3)
    assert report.tokens == 45 and report.stopped == "done" and report.out == str(out)  # 15 per reply
    assert "3 labeled" in str(report) and "45 tokens" in str(report) and "\n" not in str(report)
    written = lines(out)
    validator = make_validator(CONTACT)
    for text, line in zip(TEXTS[:3], written, strict=True):
        msgs = line["messages"]
        assert list(line) == ["messages"]
        assert msgs[:-1] == extraction_request(mask_email(text), CONTACT).messages  # the local prompt, redacted
        assert msgs[-1]["role"] == "assistant" and validator.is_valid(json.loads(msgs[-1]["content"]))
    # the same bytes Escalation(record_to=...) writes for the same request
    ref = tmp_path / "escalations.jsonl"
    esc = edgeslm.Escalation(teacher(cloud), redact=mask_email, record_to=ref)
    esc.escalate(extraction_request(TEXTS[0], CONTACT))
    assert ref.read_text(encoding="utf-8").splitlines()[0] == out.read_text(encoding="utf-8").splitlines()[0]
    # redaction: nothing with an address reached the server or the files
    assert all(b"@" not in r["raw"] for r in cloud.requests)
    assert "@" not in out.read_text(encoding="utf-8")
    done = done_lines(out)
    assert done == [{"key": hashlib.sha256(t.encode()).hexdigest(), "ok": True} for t in TEXTS[:3]]


def test_jsonl_input_instructions_and_pydantic_schema(cloud: CloudStandin, tmp_path: Path) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Contact(pydantic.BaseModel):
        name: str
        email: str

    src = tmp_path / "texts.jsonl"
    src.write_text("\n".join([json.dumps({"id": 1, "text": TEXTS[0]}), "", json.dumps(TEXTS[1])]) + "\n")
    out = tmp_path / "train.jsonl"
    report = edgeslm.teach(src, Contact, teacher=teacher(cloud), out=out, instructions="Find the person.")
    assert report.labeled == 2 and list(asked(cloud)) == TEXTS[:2]
    assert cloud.bodies()[0]["messages"][0]["content"].startswith("Find the person.")
    assert cloud.bodies()[0]["response_format"]["json_schema"]["schema"] == Contact.model_json_schema()


def test_answers_outside_the_schema_fail_and_are_asked_again(cloud: CloudStandin, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    cloud.answer = lambda body: ({"content": '{"name": 7}'} if "Person 1 " in body["messages"][-1]["content"]
                                 else label(body))
    report = edgeslm.teach(TEXTS[:3], CONTACT, teacher=teacher(cloud), out=out)
    assert report.labeled == 2 and report.requests == 3 and report.stopped == "done"
    ((index, reason),) = report.failed
    assert index == 1 and "schema" in reason
    assert [json.loads(x["messages"][-1]["content"])["name"] for x in lines(out)] == ["Person 0", "Person 2"]
    cloud.answer = label
    again = edgeslm.teach(TEXTS[:3], CONTACT, teacher=teacher(cloud), out=out)
    assert (again.labeled, again.skipped, again.failed, again.requests) == (1, 2, [], 1)
    assert asked(cloud)[TEXTS[1]] == 2 and len(lines(out)) == 3


# ----------------------------------------------------------------------------------------- budget, resume


def test_request_budget_stops_and_a_rerun_pays_only_for_the_rest(cloud: CloudStandin, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    first = edgeslm.teach(TEXTS, CONTACT, teacher=teacher(cloud), out=out, max_requests=2)
    assert (first.labeled, first.requests, first.stopped, first.remaining) == (2, 2, "budget", 4)
    assert "budget" in str(first) and len(lines(out)) == 2
    second = edgeslm.teach(TEXTS, CONTACT, teacher=teacher(cloud), out=out)
    assert (second.labeled, second.skipped, second.requests, second.stopped) == (4, 2, 4, "done")
    assert asked(cloud) == Counter(TEXTS)  # each text reached the server exactly once
    assert [json.loads(x["messages"][-1]["content"])["name"] for x in lines(out)] == [f"Person {i}" for i in range(6)]
    third = edgeslm.teach(TEXTS, CONTACT, teacher=teacher(cloud), out=out, max_requests=0)
    assert (third.skipped, third.requests, third.stopped) == (6, 0, "done") and len(cloud.requests) == 6


def test_token_budget_uses_the_reported_usage_or_an_estimate(cloud: CloudStandin, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    report = edgeslm.teach(TEXTS, CONTACT, teacher=teacher(cloud), out=out, max_tokens=40)
    # 15 tokens a reply: a third request would pass 40
    assert (report.requests, report.tokens, report.stopped, report.remaining) == (2, 30, "budget", 4)
    # a teacher function that reports no usage: (bytes sent + received) / 4
    sent: list[int] = []

    def plain(req: edgeslm.EscalationRequest) -> str:
        sent.append(len(json.dumps(req.to_dict(), ensure_ascii=False, default=str).encode()))
        return '{"name": "X", "email": "y"}'

    est = edgeslm.teach(TEXTS[:2], CONTACT, teacher=plain, out=tmp_path / "b.jsonl")
    assert est.tokens == sum(math.ceil((n + len('{"name": "X", "email": "y"}')) / 4) for n in sent) > 0
    dry = edgeslm.teach(TEXTS, CONTACT, teacher=plain, out=tmp_path / "c.jsonl", max_tokens=0)
    assert (dry.requests, dry.stopped, dry.remaining) == (0, "budget", 6)


def test_a_text_repeated_in_the_input_is_asked_once(cloud: CloudStandin, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    report = edgeslm.teach([TEXTS[0], TEXTS[1], TEXTS[0]], CONTACT, teacher=teacher(cloud), out=out)
    assert (report.labeled, report.skipped, report.requests) == (2, 1, 2) and len(lines(out)) == 2


def test_a_cut_last_line_is_removed_and_asked_again(cloud: CloudStandin, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    edgeslm.teach(TEXTS[:2], CONTACT, teacher=teacher(cloud), out=out)
    whole = out.read_bytes()
    with open(out, "ab") as f:  # a run killed while writing the third label (not noted in .done)
        f.write(b'{"messages": [{"role": "system", "content": "Extr')
    report = edgeslm.teach(TEXTS[:3], CONTACT, teacher=teacher(cloud), out=out)
    assert (report.labeled, report.skipped, report.requests) == (1, 2, 1)
    assert out.read_bytes().startswith(whole) and len(lines(out)) == 3  # the old lines are untouched


def test_a_label_written_but_not_noted_is_not_paid_twice(cloud: CloudStandin, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    edgeslm.teach(TEXTS[:3], CONTACT, teacher=teacher(cloud), out=out, redact=mask_email)
    done = out.with_name(out.name + ".done")
    kept = done.read_text().splitlines()
    done.write_text("\n".join(kept[:2]) + "\n" + kept[2][:10])  # killed between the label and its note
    report = edgeslm.teach(TEXTS[:3], CONTACT, teacher=teacher(cloud), out=out, redact=mask_email)
    assert (report.labeled, report.skipped, report.requests) == (0, 3, 0) and len(lines(out)) == 3
    assert all(d["ok"] for d in done_lines(out))


def test_a_whole_last_line_without_newline_is_kept(cloud: CloudStandin, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    mine = {"messages": [{"role": "user", "content": "hand-made"}, {"role": "assistant", "content": "{}"}]}
    out.write_text(json.dumps(mine))  # another tool's file: no final newline
    report = edgeslm.teach(TEXTS[:1], CONTACT, teacher=teacher(cloud), out=out)
    assert report.labeled == 1 and lines(out)[0] == mine and len(lines(out)) == 2


def test_resume_false_refuses_an_existing_dataset(cloud: CloudStandin, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    edgeslm.teach(TEXTS[:1], CONTACT, teacher=teacher(cloud), out=out)
    before = out.read_bytes()
    with pytest.raises(edgeslm.InvalidRequestError, match="already has lines") as e:
        edgeslm.teach(TEXTS, CONTACT, teacher=teacher(cloud), out=out, resume=False)
    assert "delete" in (e.value.hint or "") and out.read_bytes() == before and len(cloud.requests) == 1
    # deleting the dataset starts over: its stale .done is not trusted
    out.unlink()
    again = edgeslm.teach(TEXTS[:1], CONTACT, teacher=teacher(cloud), out=out, resume=False)
    assert again.labeled == 1 and again.skipped == 0 and len(cloud.requests) == 2


# ----------------------------------------------------------------------------------------- bad input, bad teacher


@pytest.mark.parametrize(
    ("content", "match"),
    [('"fine"\n{"text": "ok"}\n{"text": "cut\n', "line 3: not JSON"),
     ('"fine"\n{"id": 2, "body": "x"}\n', 'line 2: the object has no "text" key'),
     ('"fine"\n\n42\n', "line 3: the text must be a string"),
     ('"fine"\n"  "\n', "line 2: the text is empty")],
)
def test_a_bad_input_line_is_named_before_anything_is_sent(cloud: CloudStandin, tmp_path: Path, content: str,
                                                           match: str) -> None:
    src, out = tmp_path / "texts.jsonl", tmp_path / "train.jsonl"
    src.write_text(content)
    with pytest.raises(edgeslm.DatasetError, match=match) as e:
        edgeslm.teach(src, CONTACT, teacher=teacher(cloud), out=out)
    assert str(src) in str(e.value) and e.value.hint
    assert cloud.requests == [] and not out.exists()
    with pytest.raises(edgeslm.DatasetError, match="does not exist"):
        edgeslm.teach(tmp_path / "missing.jsonl", CONTACT, teacher=teacher(cloud), out=out)
    with pytest.raises(edgeslm.InvalidRequestError, match=r"texts\[1\]"):
        edgeslm.teach(["ok", 3], CONTACT, teacher=teacher(cloud), out=out)


@pytest.mark.parametrize("behaviour", ["slow", "down"])
def test_a_teacher_that_never_answers_stops_the_run(cloud: CloudStandin, tmp_path: Path, behaviour: str) -> None:
    out = tmp_path / "train.jsonl"
    edgeslm.teach(TEXTS[:1], CONTACT, teacher=teacher(cloud), out=out)
    before = out.read_bytes()
    cloud.behaviour, cloud.delay = behaviour, 3.0
    if behaviour == "down":
        cloud.stop()
    with pytest.raises(edgeslm.EscalationError, match=f"{MAX_CONSECUTIVE_FAILURES} times in a row") as e:
        edgeslm.teach(TEXTS, CONTACT, teacher=teacher(cloud), out=out, timeout=0.3)
    assert re.search("server|URL", e.value.hint or "") and "resume" in (e.value.hint or "")
    report = e.value.report  # type: ignore[attr-defined]
    assert report.skipped == 1 and [i for i, _ in report.failed] == [1, 2, 3, 4, 5] and report.remaining == 0
    assert report.requests == MAX_CONSECUTIVE_FAILURES
    assert out.read_bytes() == before  # intact; the failures are noted as not ok and asked again next time
    assert [d["ok"] for d in done_lines(out)] == [True] + [False] * 5


def test_a_failing_redact_sends_nothing_for_that_text(cloud: CloudStandin, tmp_path: Path) -> None:
    def redact(s: str) -> str:
        if "Person 1 " in s:
            raise ValueError("cannot redact this one")
        return mask_email(s)

    report = edgeslm.teach(TEXTS[:3], CONTACT, teacher=teacher(cloud), out=tmp_path / "t.jsonl", redact=redact)
    assert report.labeled == 2 and report.requests == 2 and report.failed[0][0] == 1
    assert "redact" in report.failed[0][1] and all("Person 1 " not in t for t in asked(cloud))


def test_bad_arguments(cloud: CloudStandin, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    for kw in ({"max_requests": -1}, {"max_tokens": 1.5}, {"timeout": 0}, {"teacher": "http://x/v1"},
               {"examples": "not pairs"}):
        with pytest.raises(edgeslm.InvalidRequestError) as e:
            edgeslm.teach(TEXTS, CONTACT, **{"teacher": teacher(cloud), "out": out, **kw})
        assert e.value.hint
    with pytest.raises(edgeslm.InvalidRequestError, match="folder"):
        edgeslm.teach(TEXTS, CONTACT, teacher=teacher(cloud), out=tmp_path)
    assert cloud.requests == [] and not out.exists()


def test_progress_bar(cloud: CloudStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = edgeslm.teach(TEXTS[:2], CONTACT, teacher=teacher(cloud), out=tmp_path / "t.jsonl", progress=True)
    assert report.labeled == 2 and "2 labeled" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- CLI


def test_cli_teach_end_to_end(cloud: CloudStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    schema, src, out = tmp_path / "s.json", tmp_path / "texts.jsonl", tmp_path / "train.jsonl"
    schema.write_text(json.dumps(CONTACT))
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS[:3])))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-must-not-leak")
    monkeypatch.setenv("TEACH_KEY", "sk-named")
    base = ["teach", "--schema", str(schema), "--teacher", cloud.url, "--model", "standin-large", str(src),
            "-o", str(out), "--redact", EMAIL.pattern, "--redact", r"order \d+"]
    assert main([*base, "--max-requests", "2"]) == 0
    assert "2 labeled" in capsys.readouterr().out
    assert main([*base, "--api-key-env", "TEACH_KEY", "--timeout", "5"]) == 0
    assert "1 labeled, 2 already done" in capsys.readouterr().out
    assert asked(cloud) == Counter(f"Person {i} writes from [REDACTED] about [REDACTED]." for i in range(3))
    auth = [{k.lower(): v for k, v in r["headers"].items()}.get("authorization") for r in cloud.requests]
    assert auth == ["Bearer EMPTY", "Bearer EMPTY", "Bearer sk-named"]  # no key read unless named
    assert len(lines(out)) == 3 and "@" not in out.read_text()
    # refusals exit 2 and say why
    assert main([*base, "--no-resume"]) == 2
    assert "already has lines" in capsys.readouterr().err
    assert main([*base, "--api-key-env", "NO_SUCH_VAR_FOR_TEACH"]) == 2
    assert "NO_SUCH_VAR_FOR_TEACH" in capsys.readouterr().err
    src.write_text('"fine"\nnot json\n')
    assert main(base) == 2
    assert "line 2" in capsys.readouterr().err and len(cloud.requests) == 3


def test_a_dataset_that_cannot_be_written_stops_the_run_and_keeps_the_text_pending(cloud: CloudStandin,
                                                                                    tmp_path: Path) -> None:
    """The label is not on disk, so the text is not marked done: a rerun asks it again."""
    out = tmp_path / "train.jsonl"
    edgeslm.teach(TEXTS[:1], CONTACT, teacher=teacher(cloud), out=out)
    import edgeslm.escalation.policy as escmod

    def full(path, record):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    original = escmod._append_line
    escmod._append_line = full
    try:
        with pytest.raises(edgeslm.DatasetError, match="No space left"):
            edgeslm.teach(TEXTS[:2], CONTACT, teacher=teacher(cloud), out=out)
    finally:
        escmod._append_line = original
    assert len(out.read_text().splitlines()) == 1  # the first label is intact
    again = edgeslm.teach(TEXTS[:2], CONTACT, teacher=teacher(cloud), out=out)
    assert again.skipped == 1 and again.labeled == 1 and len(out.read_text().splitlines()) == 2
