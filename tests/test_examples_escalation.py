"""examples/triage_escalation.py against a chat-completions stand-in on 127.0.0.1 (real HTTP)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

from ._cloud_standin import CloudStandin, reply_content
from .conftest import requires_smollm2

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openai") is None,
                                reason='openai not installed: pip install ".[cloud]"')


def _example():
    spec = importlib.util.spec_from_file_location("triage_escalation", ROOT / "examples" / "triage_escalation.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@requires_smollm2
def test_triage_escalates_redacted_tickets_to_the_server_and_records_them(tmp_path: Path) -> None:
    ex = _example()
    tickets = tmp_path / "tickets.jsonl"
    tickets.write_text("\n".join(json.dumps({"text": t}) for t in [
        "Write to ana.lopez@example.com or +44 20 7946 0958: my Nimbus Drive invoice is charged twice!",
        "The Tempo Watch strap broke after a week.",
    ]) + "\n")
    answer = {"category": "billing", "priority": "high", "product": "Nimbus Drive"}
    audit, dataset = tmp_path / "audit.jsonl", tmp_path / "dataset.jsonl"
    out = io.StringIO()
    with CloudStandin(reply_content(json.dumps(answer))) as cloud, contextlib.redirect_stdout(out):
        # every confidence is below 1.0: both tickets go to the server
        code = ex.main([str(tickets), "--base-url", cloud.url, "--model", "big-model", "--min-confidence", "1.0",
                        "--audit-log", str(audit), "--record-to", str(dataset)])
        sent = json.dumps(cloud.bodies())
    assert code == 0
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert line["escalated"] is True and line["answered_by"] == "big-model" and line["triage"] == answer
        assert line["trigger"] == "low_confidence"
    assert "ana.lopez@example.com" not in sent and "7946" not in sent and "[email]" in sent and "[phone]" in sent
    assert len(audit.read_text().splitlines()) == 2
    assert "Nimbus" not in audit.read_text()  # the audit log holds no content unless asked
    rows = [json.loads(x) for x in dataset.read_text().splitlines()]
    assert len(rows) == 2 and json.loads(rows[0]["messages"][-1]["content"]) == answer


@requires_smollm2
def test_triage_without_a_server_stays_on_the_device() -> None:
    ex = _example()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert ex.main([]) == 0
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == len(ex.SAMPLES) and not any(x["escalated"] for x in lines)
    assert all(x["answered_by"] == "smollm2-135m" for x in lines)
