"""``python -m edgeslm.bench``: a report a user can read, with their own task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edgeslm.bench.report import EDGESLM, Report
from edgeslm.bench.task import load_task, score

from .conftest import requires_smollm2

FIXTURE = Path(__file__).parent / "data" / "task_small.jsonl"


def test_task_file_keeps_good_lines_and_names_bad_ones() -> None:
    examples, errors = load_task(FIXTURE)
    assert [e["id"] for e in examples] == ["a", "b", "c"]
    assert len(errors) == 2 and errors[0].startswith("line 3: not JSON") and errors[1] == "line 5: missing expected"


def test_scoring_by_hand() -> None:
    assert score({"name": "Maria  Lopez", "city": "lisbon"}, {"name": "Maria Lopez", "city": "Lisbon"}) == (
        True, {"name": True, "city": True})
    assert score({"vendor": "ACME", "total": 99.5}, {"vendor": "ACME Corp", "total": 99.50}) == (
        False, {"vendor": False, "total": True})
    assert score(None, {"a": 1}) == (False, {"a": False})
    assert score({"total": 100}, {"total": 100.0})[0] and not score({"ok": 1}, {"ok": True})[0]


def _report() -> Report:
    r = Report(quick=True, machine={"cpu": "x", "cpu_count": 2, "ram_total_bytes": 1 << 30, "gpus": [], "os": "Linux",
                                    "arch": "x86_64", "versions": {"edgeslm": "0"}})
    r.add("m", "decode", EDGESLM, decode_tok_s=90.0)
    r.add("m", "decode", "peer", decode_tok_s=100.0)
    r.add("m", "task", EDGESLM, items=4, valid_rate=1.0, accuracy=0.75, s_per_item=0.5, latency_p50_s=0.4,
          prompt_tokens_mean=200, completion_tokens_mean=20)
    r.add("m", "task", "peer", items=4, valid_rate=0.5, accuracy=0.25, s_per_item=1.0)
    return r


def test_ratios_and_cost_come_from_this_runs_records() -> None:
    r = _report()
    ratios = {(x["scenario"], x["metric"]): x["ratio"] for x in r.ratios()}
    assert ratios[("decode", "decode_tok_s")] == 0.9 and ratios[("task", "s_per_item")] == 0.5
    assert ratios[("task", "accuracy")] == 3.0
    cost = r.cost()[0]
    assert cost["this_device"]["devices_needed"] == 1  # 100k x 0.5 s fits in a day on one device
    assert cost["frontier_api"]["usd_per_month"] == round(30 * 100_000 * (200 * 0.15 + 20 * 0.6) / 1e6, 2)
    md = r.markdown()
    assert "| model | system | decode tok/s" in md and "## Assumptions" in md
    doc = r.to_json()
    assert doc["schema_version"] == 1 and {"machine", "records", "ratios", "cost", "assumptions"} <= doc.keys()


@requires_smollm2
def test_own_task_end_to_end_in_a_plain_terminal(tmp_path) -> None:
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    env = {**os.environ, "TERM": "dumb"}
    p = subprocess.run([sys.executable, "-m", "edgeslm.bench", "--only", "task", "--task", str(FIXTURE), "--no-peer",
                        "--json", str(out_json), "--markdown", str(out_md)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr
    assert "Your task: accuracy and latency" in p.stdout and "\x1b[" not in p.stdout
    assert "line 3: not JSON" in p.stdout + p.stderr
    doc = json.loads(out_json.read_text())
    rows = doc["sections"]["smollm2-135m"]["task"]["rows"]["edgeslm"]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    rec = next(r for r in doc["records"] if r["scenario"] == "task" and r["system"] == EDGESLM)
    assert rec["accuracy"] == sum(r["exact"] for r in rows) / 3  # the hand count of the rows
    assert rec["valid_rate"] == sum(r["valid"] for r in rows) / 3 and rec["peak_rss_bytes"] > 0
    assert doc["machine"]["cpu_count"] >= 1 and doc["machine"]["versions"]["llama_cpp_python"]
    assert "| smollm2-135m | edgeslm |" in out_md.read_text()
