"""``python -m edgeslm.bench``: a report a user can read, with their own task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "| model | backend | system | decode tok/s" in md and "## Assumptions" in md
    doc = r.to_json()
    assert doc["schema_version"] == 1 and {"machine", "records", "ratios", "cost", "assumptions"} <= doc.keys()


@requires_smollm2
def test_own_task_quick_run_in_a_plain_terminal_has_every_documented_field(tmp_path) -> None:
    from edgeslm.bench.report import missing_fields

    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    # an empty test cache: no ONNX variant of the bundled model, so the onnx section says so in one line
    env = {**os.environ, "TERM": "dumb", "EDGESLM_TEST_CACHE": str(tmp_path / "no-onnx")}
    p = subprocess.run([sys.executable, "-m", "edgeslm.bench", "--quick", "--only", "task", "onnx", "--task",
                        str(FIXTURE), "--no-peer", "--json", str(out_json), "--markdown", str(out_md)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr
    assert "Your task: accuracy and latency" in p.stdout and "\x1b[" not in p.stdout
    assert "line 3: not JSON" in p.stdout + p.stderr
    assert "note: onnx · smollm2-135m: no ONNX rows: " in p.stdout
    assert "Escalation (smollm2-135m, --task " in p.stdout and "<- budget" in p.stdout
    doc = json.loads(out_json.read_text())
    assert missing_fields(doc) == [] and doc["quick"] is True
    rows = doc["sections"]["smollm2-135m"]["task"]["rows"]["edgeslm"]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    rec = next(r for r in doc["records"] if r["scenario"] == "task" and r["system"] == EDGESLM)
    assert rec["accuracy"] == sum(r["exact"] for r in rows) / 3  # the hand count of the rows
    assert rec["valid_rate"] == sum(r["valid"] for r in rows) / 3 and rec["peak_rss_bytes"] > 0
    assert doc["machine"]["cpu_count"] >= 1 and doc["machine"]["versions"]["llama_cpp_python"]
    # the escalation view is computed from this run's rows: at 0 % only invalid answers go
    view = doc["escalation"][0]
    assert view["items"] == 3 and view["local_accuracy"] == rec["accuracy"]
    invalid = sum(not r["valid"] for r in rows)
    assert view["curve"][0]["escalated"] == invalid
    assert view["curve"][0]["accuracy"] == (sum(r["exact"] for r in rows) + invalid) / 3
    assert doc["onnx"] == [{"model": "smollm2-135m", "available": False, "why": doc["onnx"][0]["why"]}]
    assert "| smollm2-135m | edgeslm |" in out_md.read_text()

# ---------------------------------------------------------------------------- escalation view
# ten items: (confidence, right); item 8 has no valid local answer
HAND = [(0.95, True), (0.90, True), (0.85, False), (0.80, True), (0.70, True), (0.60, False), (0.50, True),
        (0.40, False), (None, False), (0.30, False)]


def _hand() -> tuple[list[float | None], list[bool], list[bool]]:
    conf = [c for c, _ in HAND]
    return conf, [ok for _, ok in HAND], [c is not None for c in conf]


def test_escalation_view_matches_a_hand_count() -> None:
    from edgeslm.bench.escalation import escalation_view

    conf, right, valid = _hand()
    v = escalation_view(conf, right, valid, shares=(0.0, 0.1, 0.2, 0.3, 0.5), budget=0.2)
    by = {p["share"]: p for p in v["curve"]}
    assert v["items"] == 10 and v["invalid"] == 1 and v["local_accuracy"] == 0.5
    # the invalid item always goes (on_invalid) and uses up budget first
    assert by[0.0]["escalated"] == 1 and by[0.0]["accuracy"] == 0.6 and by[0.1]["escalated"] == 1
    # 20 %: 2 may go -> the invalid one and the least confident valid one (0.30); threshold = 2nd lowest = 0.40
    assert by[0.2]["escalated"] == 2 and by[0.2]["threshold"] == 0.40 and by[0.2]["accuracy"] == 0.7
    assert by[0.2]["local_errors_caught"] == 2 / 5 and by[0.2]["budgeted"]
    assert [p["share"] for p in v["curve"] if p["budgeted"]] == [0.2]
    # 30 %: + 0.40 (wrong); 50 %: + 0.50 (right) and 0.60 (wrong): 4 right kept locally + 5 sent
    assert by[0.3]["escalated"] == 3 and by[0.3]["accuracy"] == 0.8
    assert by[0.5]["escalated"] == 5 and by[0.5]["accuracy"] == 0.9 and by[0.5]["local_errors_caught"] == 4 / 5
    # the cloud accuracy is an assumption: at p = 0.5 an escalated item counts half
    half = escalation_view(conf, right, valid, shares=(0.5,), budget=0.5, cloud_accuracy=0.5)
    assert half["curve"][0]["accuracy"] == (4 + 0.5 * 5) / 10 and half["cloud_accuracy_assumed"] == 0.5
    # the budget's threshold is the one edgeslm.calibrate fits, with its calibrated confidence
    cal = v["calibration"]
    assert cal["available"] and cal["threshold"] == 0.40 and 0.0 <= cal["threshold_confidence"] <= 1.0
    assert by[0.2]["threshold_confidence"] == cal["threshold_confidence"]


def test_escalation_view_ties_stay_local_and_measured_answers_replace_the_assumption() -> None:
    from edgeslm.bench.escalation import escalation_order, escalation_view

    tied = escalation_view([0.5, 0.5, 0.9, 0.9], [False, True, True, True], [True] * 4, shares=(0.25,), budget=0.25)
    assert tied["curve"][0]["escalated"] == 0  # both 0.5s sit on the threshold: neither goes
    conf, right, valid = _hand()
    assert escalation_order(conf, valid, 0.3) == [7, 8, 9]
    # measured: 8 answered right, 9 answered wrong, 7's hand-off failed (its wrong local answer stands)
    v = escalation_view(conf, right, valid, shares=(0.3,), budget=0.3, cloud_correct={7: None, 8: True, 9: False})
    assert v["curve"][0]["accuracy"] == 0.6 and v["curve"][0]["cloud_answers_used"] == 3
    assert v["cloud_accuracy_assumed"] is None


def test_escalated_items_go_to_a_real_openai_compatible_server() -> None:
    pytest.importorskip("openai")
    from edgeslm.bench.escalation import ask_cloud

    from ._cloud_standin import CloudStandin

    def answer(body: dict) -> dict:
        text = body["messages"][-1]["content"]
        if "Lisbon" in text:
            return {"content": '{"city": "Lisbon"}'}
        if "Porto" in text:
            return {"content": '{"city": "Braga"}'}
        return {"content": '{"town": 3}'}  # does not match the schema: the hand-off fails

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    items = [{"text": f"She lives in {c}.", "schema": schema, "expected": {"city": c}}
             for c in ("Lisbon", "Porto", "Faro")]
    with CloudStandin(answer) as cloud:
        got = ask_cloud(items, url=cloud.url, model="big", timeout=10, compare=lambda g, e: score(g, e)[0])
        assert len(cloud.bodies()) == 3 and cloud.bodies()[0]["response_format"]["type"] == "json_schema"
    assert [r["right"] for r in got["rows"]] == [True, False, None]
    assert got["asked"] == 3 and got["answered"] == 2 and got["right"] == 1 and got["latency_p50_s"] > 0
    assert "schema" in got["rows"][2]["error"]


# ---------------------------------------------------------------------------- report, tables, charts
def _full_report() -> Report:
    from edgeslm.bench.escalation import escalation_view

    r = _report()
    r.add("m", "decode", EDGESLM, backend="onnx", tokens=64, decode_tok_s=80.0, prompt_tok_s=900.0, ttft_s=0.1)
    r.add("m", "decode", "onnxruntime-genai generate loop", backend="onnx", tokens=64, decode_tok_s=100.0)
    r.add("m", "extract_latency", EDGESLM, backend="onnx", items=2, valid_rate=1.0, accuracy=0.5,
          latency_p50_s=0.3, latency_p95_s=0.4, s_per_item=0.3)
    r.add("m", "extract_latency", EDGESLM, backend="llama.cpp", items=2, valid_rate=1.0, accuracy=0.5,
          latency_p50_s=0.6, latency_p95_s=0.8, s_per_item=0.6)
    r.onnx.append({"model": "m", "available": True, "folder": "/x", "found": "--onnx /x", "load_s": 1.0})
    conf, right, valid = _hand()
    r.escalation.append({"model": "m", "system": EDGESLM, "source": "hand-made", "cloud": None,
                         **escalation_view(conf, right, valid)})
    rows = [{"s": 0.1 * (i + 1)} for i in range(5)]
    r.sections["m"] = {"task": {"rows": {"edgeslm": rows, "peer": rows}},
                      "onnx": {"rows": {"onnx": rows, "llama.cpp": rows}}}
    return r


def test_new_tables_render_in_a_plain_terminal_and_ratios_pair_backends() -> None:
    import io

    from rich.console import Console

    from edgeslm.bench.report import missing_fields

    r = _full_report()
    ratios = {(x["backend"], x["scenario"], x["metric"]): x for x in r.ratios()}
    assert ratios[("onnx", "decode", "decode_tok_s")]["ratio"] == 0.8
    cross = ratios[("onnx", "extract_latency", "s_per_item")]
    assert cross["ratio"] == 0.5 and cross["baseline_system"] == "edgeslm on llama.cpp"
    buf = io.StringIO()
    r.render(Console(file=buf, width=140, force_terminal=False, color_system=None))
    text = buf.getvalue()
    assert "\x1b[" not in text and "Escalation (m, hand-made)" in text and "<- budget" in text
    assert "probability 1" in text and "Extraction by backend" in text and "onnxruntime-genai generate loop" in text
    md = r.markdown()
    assert "| 5 % | 1 of 10 | 10.0% | 60.0% |" in md and "## Assumptions" in md
    doc = json.loads(json.dumps(r.to_json()))
    # the hand-made machine and the first four records (from _report) are partial on purpose
    partial = ("machine.", *(f"records[{i}]" for i in range(4)))
    assert [m for m in missing_fields(doc) if not m.startswith(partial)] == []
    assert doc["escalation"][0]["curve"][0]["share"] == 0.0 and doc["assumptions"]["cloud_accuracy"] == 1.0


def test_plot_writes_pngs(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from edgeslm.bench.plot import write_plots

    files = write_plots(_full_report(), tmp_path / "charts")
    assert sorted(p.name for p in files) == ["escalation.png", "latency.png", "tokens_per_s.png"]
    for p in files:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_plot_without_matplotlib_says_what_to_install(monkeypatch, tmp_path, capsys) -> None:
    import edgeslm
    from edgeslm.bench.__main__ import main
    from edgeslm.bench.plot import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(edgeslm.MissingExtraError) as e:
        require_matplotlib()
    assert isinstance(e.value, edgeslm.EdgeSLMError) and e.value.hint == 'pip install "edgeslm[plot]"'
    # refused before anything runs
    assert main(["--only", "task", "--plot", str(tmp_path)]) == 2
    assert 'pip install "edgeslm[plot]"' in capsys.readouterr().err


def test_bad_options_are_refused_with_a_hint(capsys) -> None:
    from edgeslm.bench.__main__ import main

    assert main(["--cloud-url", "http://127.0.0.1:9/v1"]) == 2
    assert "--cloud-model go together" in capsys.readouterr().err
    assert main(["--escalation-budget", "5"]) == 2
    assert "Hint: e.g. --escalation-budget 0.05" in capsys.readouterr().err


def test_documented_fields_are_in_the_readme() -> None:
    from edgeslm.bench import report as rp

    readme = (Path(__file__).parents[1] / "benchmarks" / "README.md").read_text(encoding="utf-8")
    keys = {*rp.TOP_KEYS, *rp.MACHINE_KEYS, *rp.RECORD_KEYS, *rp.RATIO_KEYS, *rp.COST_KEYS, *rp.ESCALATION_KEYS,
            *rp.CALIBRATION_KEYS, *rp.CURVE_KEYS, *rp.CLOUD_KEYS, *rp.ONNX_KEYS[True], *rp.ONNX_KEYS[False],
            *rp.SCENARIO_KEYS, *(k for a, b in rp.SCENARIO_KEYS.values() for k in (*a, *b))}
    assert sorted(k for k in keys if f"`{k}`" not in readme and f"`{k}[]`" not in readme) == []


# ---------------------------------------------------------------------------- ONNX rows
def test_find_onnx_says_why_not() -> None:
    from edgeslm.bench.onnx import find_onnx

    folder, why = find_onnx("gemma-3-270m")
    assert folder is None and "no ONNX variant of gemma-3-270m" in why
    folder, why = find_onnx("phi-4-mini")  # in the catalog, not in this test run's empty cache
    assert folder is None and "edgeslm pull phi-4-mini --format onnx" in why
    folder, why = find_onnx("m", {"m": str(Path(__file__).parent)})
    assert folder is None and "no genai_config.json" in why


@requires_smollm2
def test_onnx_rows_beside_llama_cpp_on_the_real_models() -> None:
    pytest.importorskip("onnxruntime_genai")
    from edgeslm.bench.onnx import onnx_bench

    from .onnx_model import missing_build_deps, smollm2_onnx

    try:
        folder = smollm2_onnx()
    except RuntimeError as e:
        if missing_build_deps():
            pytest.skip(f"cannot build the ONNX test model: {e}")
        raise
    examples, _ = load_task(FIXTURE)
    r = onnx_bench("smollm2-135m", folder, examples[:1], n_tokens=8, reps=1, warmup=False)
    d = r["decode"]
    assert d["tokens"] == 8 and d["edgeslm_tok_s"] > 0 and d["onnxruntime_genai_tok_s"] > 0
    assert d["same_token_counts"] and abs(d["ratio"] - d["edgeslm_tok_s"] / d["onnxruntime_genai_tok_s"]) < 0.02
    for backend in ("onnx", "llama.cpp"):
        rows = r["rows"][backend]
        assert [x["id"] for x in rows] == ["a"] and rows[0]["valid"] and rows[0]["s"] > 0
        assert r["extract"][backend]["examples"] == 1


# ---------------------------------------------------------------------------- startup and adapters
@requires_smollm2
def test_startup_section_times_whole_processes_on_both_sides() -> None:
    from edgeslm.bench.startup import SCHEMA, startup_bench

    r = startup_bench("smollm2-135m", reps=1)
    for side in ("edgeslm", "peer"):
        s = r[side]
        assert s["ok"] == 1 and not s["errors"], s
        assert s["s_median"] > s["load_s"] > 0 and s["first_extract_s"] > 0 and s["import_s"] > 0
    rep = _report()
    rep.add("smollm2-135m", "startup", EDGESLM, runs=1, ok=1, s_per_item=r["edgeslm"]["s_median"],
            import_s=1.0, load_s=1.0, first_extract_s=1.0)
    rep.add("smollm2-135m", "startup", "peer", runs=1, ok=1, s_per_item=r["peer"]["s_median"], import_s=1.0,
            load_s=1.0, first_extract_s=1.0)
    titles = [t for t, _, _ in rep.tables()]
    assert any(t.startswith("Fresh process to the first validated extraction") for t in titles)
    assert any(x["scenario"] == "startup" and x["metric"] == "s_per_item" for x in rep.ratios())
    assert set(SCHEMA["required"]) == {"name", "age", "city"}


def test_model_refs_with_an_adapter() -> None:
    from edgeslm.bench.models import has_adapter, parse_ref

    assert parse_ref("smollm2-135m") == ("smollm2-135m", None, 1.0)
    assert parse_ref("smollm2-135m+adapter:./a b/lora") == ("smollm2-135m", "./a b/lora", 1.0)
    assert parse_ref("m.gguf+adapter:/x/lora@0.5") == ("m.gguf", "/x/lora", 0.5)
    assert parse_ref("m+adapter:/x/me@home") == ("m", "/x/me@home", 1.0)  # an "@" that is part of the path
    assert has_adapter("m+adapter:x") and not has_adapter("m")
    import edgeslm

    with pytest.raises(edgeslm.InvalidRequestError):
        parse_ref("+adapter:x")


def test_adapter_table_puts_each_adapter_beside_its_base() -> None:
    rep = _report()
    for model, exact in (("base", 0.25), ("base+adapter:/a", 0.65)):
        rep.add(model, "task", EDGESLM, items=20, valid_rate=1.0, accuracy=exact, field_accuracy={"a": exact, "b": 1.0},
                latency_p50_s=0.5, latency_p95_s=0.6, s_per_item=0.5, completion_tokens_mean=10,
                prompt_tokens_mean=100)
    table = next((t for t in rep.tables() if t[0].startswith("Adapters:")), None)
    assert table is not None
    rows = table[2]
    assert [r[0] for r in rows] == ["base", "base+adapter:/a"] and rows[0][3] == "25%" and rows[1][3] == "65%"
    assert rows[1][4] == "82%"  # the mean of the per-field accuracies


def test_a_json_record_renders_the_same_tables_again_and_the_committed_one_renders() -> None:
    """The docs' measurements page is generated from a committed --json record (Report.from_json)."""
    import json
    from pathlib import Path

    from edgeslm._errors import InvalidRequestError

    for r in (_report(), _full_report()):
        doc = json.loads(json.dumps(r.to_json()))  # through JSON text, as the file holds it
        again = Report.from_json(doc)
        assert again.markdown() == r.markdown() and again.to_json() == doc
    with pytest.raises(InvalidRequestError, match="schema version"):
        Report.from_json({"schema_version": 999})
    with pytest.raises(InvalidRequestError, match="damaged"):
        Report.from_json({"schema_version": 1, "records": 5})
    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "latest.json"
    md = Report.from_json(json.loads(committed.read_text(encoding="utf-8"))).markdown()
    assert "| model |" in md and "Decode speed" in md
