"""The benchmark's report: the machine, one record per model x backend x scenario beside its
baseline from the same run, the ratios, and a cost view built from the figures just measured.

The JSON written by ``--json`` has ``schema_version`` 1 and these stable keys (documented in
``benchmarks/README.md``): ``machine``, ``records``, ``ratios``, ``cost``, ``assumptions``,
``escalation`` (accuracy against share escalated, per model), ``onnx`` (which ONNX variant was
measured, or why none), ``section_seconds``, ``notes``, ``sections`` (each section's raw figures).
:meth:`Report.from_json` reads such a record back (the docs' measurements page renders one).

Over ~450 lines on purpose: the record, its ratios and every section's table are one format, kept
where one change to a record's fields is seen in the tables that print it.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import resource
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["CostAssumptions", "Report", "machine_info", "missing_fields"]

SCHEMA_VERSION = 1
EDGESLM = "edgeslm"
LLAMA_CPP = "llama.cpp"


def machine_info() -> dict[str, Any]:
    """CPU, GPU, RAM, OS and library versions of this machine."""
    from ..api.doctor import package_version
    from ..runtime.hardware import detect

    hw = detect()
    return {
        "os": f"{platform.system()} {platform.release()}", "arch": hw.arch, "cpu": hw.cpu_model,
        "cpu_count": hw.cpu_count, "cpu_features": list(hw.cpu_features), "ram_total_bytes": hw.ram_total,
        "gpus": [{"name": g.name, "api": g.api, "memory_bytes": g.memory_total} for g in hw.gpus],
        "llama_gpu_offload": hw.llama_gpu_offload,
        "versions": {"python": platform.python_version(), **{d: package_version(d) for d in (
            "edgeslm", "llama_cpp_python", "onnxruntime-genai", "llguidance", "numpy")}},
    }


# The documented fields of the JSON record (benchmarks/README.md); :func:`missing_fields` checks a record.
TOP_KEYS = ("schema_version", "started_at", "quick", "machine", "records", "ratios", "cost", "assumptions",
            "escalation", "onnx", "section_seconds", "notes", "sections")
MACHINE_KEYS = ("os", "arch", "cpu", "cpu_count", "cpu_features", "ram_total_bytes", "gpus", "llama_gpu_offload",
                "versions")
RECORD_KEYS = ("model", "backend", "scenario", "system", "peak_rss_bytes")
# per scenario: (keys of every record, extra keys of edgeslm's record)
SCENARIO_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "decode": (("tokens", "decode_tok_s"), ("prompt_tok_s", "ttft_s")),
    "extract": (("items", "valid_rate", "s_per_item"), ()),
    "bfcl": (("items", "valid_rate", "accuracy", "s_per_item", "calls"), ()),
    "task": (("items", "valid_rate", "accuracy", "field_accuracy", "latency_p50_s", "latency_p95_s", "s_per_item",
              "completion_tokens_mean", "prompt_tokens_mean"), ()),
    "extract_latency": (("items", "valid_rate", "accuracy", "latency_p50_s", "latency_p95_s", "s_per_item"), ()),
    "startup": (("runs", "ok", "s_per_item", "import_s", "load_s", "first_extract_s"), ()),
    "contention": (("cores", "tokens", "idle_tok_s", "busy_tok_s", "busy_over_idle"), ()),
    "batch": (("items", "valid_rate", "accuracy", "valid_per_s", "s_per_item"),
              ("batch_size", "decode_gain", "greedy_same", "bound", "auto_batch_size", "invariant_same",
               "invariant_docs", "invariant_cost")),
}
RATIO_KEYS = ("model", "backend", "scenario", "metric", "edgeslm", "baseline", "baseline_system", "ratio")
COST_KEYS = ("model", "scenario", "this_device", "gpu_server", "frontier_api")
ESCALATION_KEYS = ("model", "system", "source", "items", "invalid", "local_accuracy", "budget",
                   "cloud_accuracy_assumed", "calibration", "curve", "cloud")
CALIBRATION_KEYS = ("available", "score", "method", "auroc", "ece", "threshold", "threshold_confidence",
                    "share_escalated_out_of_fold", "errors_caught_out_of_fold", "warnings")
CURVE_KEYS = ("share", "escalated", "share_escalated", "accuracy", "local_errors_caught", "threshold",
              "threshold_confidence", "cloud_answers_used", "budgeted")
CLOUD_KEYS = ("url", "model", "asked", "answered", "right", "latency_p50_s", "errors", "rows")
ONNX_KEYS = {True: ("model", "available", "folder", "found", "load_s"), False: ("model", "available", "why")}


def missing_fields(doc: dict[str, Any]) -> list[str]:
    """The documented fields a ``--json`` record lacks (empty when it is complete)."""
    miss = [k for k in TOP_KEYS if k not in doc]
    miss += [f"machine.{k}" for k in MACHINE_KEYS if k not in doc.get("machine", {})]
    for i, r in enumerate(doc.get("records", [])):
        every, ours = SCENARIO_KEYS.get(r.get("scenario"), ((), ()))
        want = RECORD_KEYS + every + (ours if r.get("system") == EDGESLM else ())
        miss += [f"records[{i}].{k}" for k in want if k not in r]
    for name, keys, rows in (("ratios", RATIO_KEYS, doc.get("ratios", [])), ("cost", COST_KEYS, doc.get("cost", [])),
                             ("escalation", ESCALATION_KEYS, doc.get("escalation", []))):
        miss += [f"{name}[{i}].{k}" for i, r in enumerate(rows) for k in keys if k not in r]
    for i, v in enumerate(doc.get("escalation", [])):
        cal = v.get("calibration") or {}
        miss += [f"escalation[{i}].calibration.{k}" for k in (CALIBRATION_KEYS if cal.get("available") else
                                                              ("available",)) if k not in cal]
        miss += [f"escalation[{i}].curve[{j}].{k}" for j, p in enumerate(v.get("curve", [])) for k in CURVE_KEYS
                 if k not in p]
        if v.get("cloud"):
            miss += [f"escalation[{i}].cloud.{k}" for k in CLOUD_KEYS if k not in v["cloud"]]
    for i, o in enumerate(doc.get("onnx", [])):
        miss += [f"onnx[{i}].{k}" for k in ONNX_KEYS[bool(o.get("available"))] if k not in o]
    return miss


def _finite(v: Any) -> Any:
    """NaN and infinities as ``null``: the record stays strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class CostAssumptions:
    """Prices and volume for the cost view: printed beside it; every speed in it is measured."""

    requests_per_day: int = 100_000
    device_cost_usd: float = 1500.0  # the machine the model runs on, bought once
    device_lifetime_months: int = 36
    device_watts: float = 60.0  # while busy
    electricity_usd_per_kwh: float = 0.20
    gpu_server_usd_per_hour: float = 1.20  # a rented single-GPU server
    api_usd_per_m_input: float = 0.15  # a small frontier API model, per million tokens
    api_usd_per_m_output: float = 0.60
    escalation_budget: float = 0.05  # the share the escalation view fits its threshold for
    cloud_accuracy: float = 1.0  # escalation view: chance the cloud model is right (unless measured)


@dataclass
class Report:
    """Everything one bench run measured."""

    quick: bool
    machine: dict[str, Any] = field(default_factory=machine_info)
    records: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    assumptions: CostAssumptions = field(default_factory=CostAssumptions)
    escalation: list[dict[str, Any]] = field(default_factory=list)
    onnx: list[dict[str, Any]] = field(default_factory=list)
    section_seconds: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ records
    def add(self, model: str, scenario: str, system: str, backend: str = LLAMA_CPP, **figures: Any) -> None:
        self.records.append({"model": model, "backend": backend, "scenario": scenario, "system": system,
                             "peak_rss_bytes": peak_rss_bytes(), **figures})

    def ratios(self) -> list[dict[str, Any]]:
        """edgeslm over its baseline, per model x scenario x metric, from records of this run only."""
        out = []
        keys = {(r["model"], r["backend"], r["scenario"]) for r in self.records}
        for model, backend, scenario in sorted(keys):
            rows = [r for r in self.records if (r["model"], r["backend"], r["scenario"]) == (model, backend, scenario)]
            ours = next((r for r in rows if r["system"] == EDGESLM), None)
            base = next((r for r in rows if r["system"] != EDGESLM), None)
            if ours is not None and scenario == "batch":  # batched against each one-at-a-time baseline
                for b in rows:
                    a, v = ours.get("valid_per_s"), b.get("valid_per_s")
                    if b["system"] != EDGESLM and v and a is not None:
                        out.append({"model": model, "backend": backend, "scenario": scenario, "metric": "valid_per_s",
                                    "edgeslm": a, "baseline": v, "baseline_system": b["system"],
                                    "ratio": round(a / v, 3)})
                continue
            if ours is not None and base is None and backend != LLAMA_CPP:
                # another backend with no peer of its own (ONNX extraction): edgeslm on llama.cpp, same items
                base = next((dict(r, system=f"{EDGESLM} on {LLAMA_CPP}") for r in self.records
                             if (r["model"], r["backend"], r["scenario"], r["system"])
                             == (model, LLAMA_CPP, scenario, EDGESLM)), None)
            if ours is None or base is None:
                continue
            for metric in ("decode_tok_s", "latency_p50_s", "latency_p95_s", "s_per_item", "valid_rate", "accuracy"):
                a, b = ours.get(metric), base.get(metric)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                    out.append({"model": model, "backend": backend, "scenario": scenario, "metric": metric,
                                "edgeslm": a, "baseline": b, "baseline_system": base["system"],
                                "ratio": round(a / b, 3)})
        return out

    # ------------------------------------------------------------------ cost view
    def cost(self) -> list[dict[str, Any]]:
        """Monthly cost and p50 latency of this device, a rented GPU server and a frontier API for the
        daily volume, from the measured extraction figures (per model)."""
        a = self.assumptions
        rows = []
        for r in self.records:
            if r["system"] != EDGESLM or r.get("s_per_item") is None or r["scenario"] not in ("task", "extract"):
                continue
            busy_s = a.requests_per_day * r["s_per_item"]  # one device, one request at a time
            devices = max(1, int(-(-busy_s // 86400)))
            kwh = busy_s / 3600 * a.device_watts / 1000 * 30
            device_month = devices * a.device_cost_usd / a.device_lifetime_months + kwh * a.electricity_usd_per_kwh
            tokens_in, tokens_out = r.get("prompt_tokens_mean"), r.get("completion_tokens_mean")
            api_month = None
            if tokens_in is not None and tokens_out is not None:
                api_month = 30 * a.requests_per_day * (tokens_in * a.api_usd_per_m_input
                                                       + tokens_out * a.api_usd_per_m_output) / 1e6
            rows.append({
                "model": r["model"], "scenario": r["scenario"],
                "this_device": {"usd_per_month": round(device_month, 2), "devices_needed": devices,
                                "latency_p50_s": r.get("latency_p50_s"), "data_goes": "stays on the device"},
                "gpu_server": {"usd_per_month": round(a.gpu_server_usd_per_hour * 730, 2), "latency_p50_s": None,
                               "data_goes": "your rented server"},
                "frontier_api": {"usd_per_month": None if api_month is None else round(api_month, 2),
                                 "latency_p50_s": None, "data_goes": "the API provider"},
            })
        return rows

    # ------------------------------------------------------------------ output
    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Report:
        """The report a ``--json`` record holds (what :meth:`to_json` wrote), to render it again: the
        docs' measurements page is generated this way from a committed record."""
        from .._errors import InvalidRequestError

        if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
            got = doc.get("schema_version") if isinstance(doc, dict) else type(doc).__name__
            raise InvalidRequestError(f"not a bench record of schema version {SCHEMA_VERSION} (got {got!r})",
                                      hint="write one with python -m edgeslm.bench --json FILE")
        known = {f.name for f in fields(CostAssumptions)}
        try:
            return cls(quick=bool(doc.get("quick")), machine=dict(doc["machine"]),
                       records=list(doc.get("records", [])), sections=dict(doc.get("sections", {})),
                       notes=list(doc.get("notes", [])), started_at=str(doc.get("started_at", "")),
                       assumptions=CostAssumptions(**{k: v for k, v in dict(doc.get("assumptions", {})).items()
                                                      if k in known}),
                       escalation=list(doc.get("escalation", [])), onnx=list(doc.get("onnx", [])),
                       section_seconds=dict(doc.get("section_seconds", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"a damaged bench record: {type(exc).__name__}: {exc}",
                                      hint="write it again with python -m edgeslm.bench --json FILE") from None

    def to_json(self) -> dict[str, Any]:
        return _finite({
            "schema_version": SCHEMA_VERSION, "started_at": self.started_at, "quick": self.quick,
            "machine": self.machine, "records": self.records, "ratios": self.ratios(), "cost": self.cost(),
            "assumptions": asdict(self.assumptions), "escalation": self.escalation, "onnx": self.onnx,
            "section_seconds": self.section_seconds, "notes": self.notes, "sections": self.sections})

    def tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        """(title, header, rows) for each table; rendered by rich or as Markdown."""
        out: list[tuple[str, list[str], list[list[str]]]] = []
        m = self.machine
        gpus = ", ".join(g["name"] for g in m["gpus"]) or "none"
        out.append(("Machine", ["what", "value"], [
            ["CPU", f"{m['cpu']} ({m['cpu_count']} CPUs)"], ["RAM", f"{m['ram_total_bytes'] / 2**30:.1f} GiB"],
            ["GPU", gpus], ["OS", f"{m['os']} {m['arch']}"],
            ["versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)],
        ]))
        measured = self.ratios()
        ratios = {(r["model"], r["backend"], r["scenario"], r["metric"]): r for r in measured}

        def f(v: Any, fmt: str = "{:.2f}") -> str:
            return "-" if v is None else fmt.format(v)

        def ratio(r: dict[str, Any], metric: str) -> str:
            x = ratios.get((r["model"], r["backend"], r["scenario"], metric)) if r["system"] == EDGESLM else None
            return "-" if x is None else f"{x['ratio']:.3f}"

        speed = [r for r in self.records if r["scenario"] == "decode"]
        if speed:
            rows = [[r["model"], r["backend"], r["system"], f(r.get("decode_tok_s"), "{:.1f}"),
                     f(r.get("prompt_tok_s"), "{:.0f}"), f(r.get("ttft_s"), "{:.3f}"), ratio(r, "decode_tok_s")]
                    for r in speed]
            out.append(("Decode speed (greedy, same prompt and threads; ratio: edgeslm / the baseline below it)",
                        ["model", "backend", "system", "decode tok/s", "prompt tok/s", "TTFT s", "ratio"], rows))
        for scenario, title in (("extract", "Structured extraction (JSONSchemaBench sample)"),
                                ("task", "Your task: accuracy and latency"), ("bfcl", "Tool calls (BFCL, auto)")):
            recs = [r for r in self.records if r["scenario"] == scenario]
            if not recs:
                continue
            rows = [[r["model"], r["system"], str(r.get("items", "-")), f(r.get("valid_rate"), "{:.0%}"),
                     f(r.get("accuracy"), "{:.0%}"), f(r.get("latency_p50_s")), f(r.get("latency_p95_s")),
                     f(r.get("s_per_item")), ratio(r, "s_per_item")]
                    for r in recs]
            out.append((title, ["model", "system", "items", "valid", "accuracy", "p50 s", "p95 s", "s/item",
                                "time ratio"], rows))
            fields = [(r["model"], r["system"], r.get("field_accuracy") or {}) for r in recs if r.get("field_accuracy")]
            if fields:
                names = sorted({k for _, _, fa in fields for k in fa})
                out.append((f"{title}: accuracy per field", ["model", "system", *names],
                            [[mo, sy, *[f(fa.get(k), "{:.0%}") for k in names]] for mo, sy, fa in fields]))
        out += self._adapter_tables(f)
        out += self._confidence_tables()
        busy = [r for r in self.records if r["scenario"] == "contention"]
        if busy:
            peer_busy = {r["model"]: r.get("busy_tok_s") for r in busy if r["system"] != EDGESLM}
            rows = []
            for r in busy:
                other = peer_busy.get(r["model"]) if r["system"] == EDGESLM else None
                rows.append([r["model"], r["system"], str(r.get("cores")), f(r.get("idle_tok_s"), "{:.1f}"),
                             f(r.get("busy_tok_s"), "{:.1f}"), f(r.get("busy_over_idle"), "{:.2f}"),
                             f(r["busy_tok_s"] / other if other and r.get("busy_tok_s") else None, "{:.1f}x")])
            out.append(("Decode with one core busy (another process spinning; ratio: edgeslm / the baseline, busy)",
                        ["model", "system", "cores", "idle tok/s", "busy tok/s", "busy / idle", "busy ratio"], rows))
        start = [r for r in self.records if r["scenario"] == "startup"]
        if start:
            out.append(("Fresh process to the first validated extraction (median of whole processes, alternating; "
                        "ratio: edgeslm / the baseline)",
                        ["model", "system", "runs", "seconds", "import s", "load s", "first extract s", "ratio"],
                        [[r["model"], r["system"], f"{r.get('ok')}/{r.get('runs')}", f(r.get("s_per_item")),
                          f(r.get("import_s")), f(r.get("load_s")), f(r.get("first_extract_s")),
                          ratio(r, "s_per_item")] for r in start]))
        batch = [r for r in self.records if r["scenario"] == "batch"]
        if batch:
            per = {(x["model"], x["baseline_system"]): x["ratio"] for x in measured if x["scenario"] == "batch"}
            rows = []
            for r in batch:
                if r["system"] == EDGESLM:
                    vs = ", ".join(f"{v:.2f}x {b}" for (mo, b), v in per.items() if mo == r["model"]) or "-"
                    how = (f"batch {r.get('batch_size')} (batch_size=None picks {r.get('auto_batch_size')} here), "
                           f"engine gain {f(r.get('decode_gain'))}x, "
                           f"bound {f(r.get('bound'))}x, {r.get('greedy_same')}/{r.get('items')} same as one by one")
                    if r.get("invariant_docs"):
                        how += (f"; batch_invariant: {r.get('invariant_same')}/{r.get('invariant_docs')} same, "
                                f"one at a time {f(r.get('invariant_cost'))}x the time")
                else:
                    vs, how = "-", "one at a time"
                rows.append([r["model"], r["system"], how, str(r.get("items", "-")), f(r.get("valid_rate"), "{:.0%}"),
                             f(r.get("accuracy"), "{:.0%}"), f(r.get("valid_per_s")), vs])
            out.append(("Many documents, one schema (valid extractions per second; ratio: extract_many / each "
                        "one-at-a-time baseline)",
                        ["model", "system", "how", "docs", "valid", "accuracy", "valid/s", "ratio"], rows))
        lat = [r for r in self.records if r["scenario"] == "extract_latency"]
        if lat:
            out.append(("Extraction by backend (same items, alternating; time ratio: ONNX / llama.cpp)",
                        ["model", "backend", "items", "valid", "accuracy", "p50 s", "p95 s", "s/item", "time ratio"],
                        [[r["model"], r["backend"], str(r.get("items", "-")), f(r.get("valid_rate"), "{:.0%}"),
                          f(r.get("accuracy"), "{:.0%}"), f(r.get("latency_p50_s")), f(r.get("latency_p95_s")),
                          f(r.get("s_per_item")), ratio(r, "s_per_item")] for r in lat]))
        for v in self.escalation:
            cal = v["calibration"]
            cloud = v.get("cloud")
            if cloud:
                how = (f"cloud answers measured: {cloud['model']} at {cloud['url']}, {cloud['right']} of "
                       f"{cloud['asked']} right, {cloud['asked'] - cloud['answered']} failed (local answer kept)")
            else:
                how = f"assumption: the cloud model is right with probability {v['cloud_accuracy_assumed']:g}"
            rows = []
            for p in v["curve"]:
                rows.append([f"{p['share'] * 100:g} %",
                             f"{p['escalated']} of {v['items']}", f(p["share_escalated"], "{:.1%}"),
                             f(p["accuracy"], "{:.1%}"), f(p["local_errors_caught"], "{:.0%}"),
                             f(p["threshold"], "{:.4f}"), f(p["threshold_confidence"], "{:.3f}"),
                             "<- budget" if p["budgeted"] else ""])
            out.append((f"Escalation ({v['model']}, {v['source']}): accuracy against share escalated; {how}",
                        ["budget", "escalated", "share", "accuracy", "errors caught", "threshold (raw)",
                         "threshold (calibrated)", ""], rows))
            if cal.get("available"):
                out.append((f"Escalation ({v['model']}): calibrated confidence", ["measure", "value"], [
                    ["items (no valid local answer)", f"{v['items']} ({v['invalid']})"],
                    ["local accuracy", f(v["local_accuracy"], "{:.1%}")],
                    [f"AUROC of '{cal['score']}' for 'all fields right'", f(cal["auroc"], "{:.3f}")],
                    [f"ECE, {cal['method']} calibrated, out of fold", f(cal["ece"], "{:.3f}")],
                    [f"share escalated at the {v['budget'] * 100:g} % budget, out of fold",
                     f(cal["share_escalated_out_of_fold"], "{:.1%}")],
                    ["local errors caught at the budget, out of fold", f(cal["errors_caught_out_of_fold"], "{:.0%}")],
                    *[["warning", w] for w in cal["warnings"]],
                ]))
        cost = self.cost()
        if cost:
            a = self.assumptions
            rows = []
            for c in cost:
                for where in ("this_device", "gpu_server", "frontier_api"):
                    d = c[where]
                    rows.append([c["model"], where.replace("_", " "), f(d["usd_per_month"], "${:,.0f}"),
                                 f(d["latency_p50_s"]), d["data_goes"]])
            out.append((f"Cost for {a.requests_per_day:,} requests a day (assumptions below; latency measured here)",
                        ["model", "where", "per month", "p50 s", "data goes to"], rows))
        if cost or self.escalation:
            out.append(("Assumptions (options; every speed and accuracy above is measured)", ["assumption", "value"],
                        [[k, str(v)] for k, v in asdict(self.assumptions).items()]))
        return out

    def _adapter_tables(self, f: Any) -> list[tuple[str, list[str], list[list[str]]]]:
        """Each ``base+adapter:DIR`` model beside its base, on the task: validity, exact and per-field
        accuracy, latency, confidence AUROC, and the accuracy with the budget's share escalated."""
        from .models import has_adapter, parse_ref

        task = {r["model"]: r for r in self.records if r["scenario"] == "task" and r["system"] == EDGESLM}
        esc = {v["model"]: v for v in self.escalation}
        rows = []
        for model, r in task.items():
            if not has_adapter(model):
                continue
            base = parse_ref(model)[0]
            for name, rec in ((base, task.get(base)), (model, r)):
                if rec is None:
                    continue
                fa = rec.get("field_accuracy") or {}
                v = esc.get(name) or {}
                cal = v.get("calibration") or {}
                at = next((p for p in v.get("curve", []) if p.get("budgeted")), None)
                rows.append([name, str(rec.get("items", "-")), f(rec.get("valid_rate"), "{:.0%}"),
                             f(rec.get("accuracy"), "{:.0%}"), f(sum(fa.values()) / len(fa) if fa else None, "{:.0%}"),
                             f(rec.get("latency_p50_s")), f(cal.get("auroc"), "{:.3f}"),
                             f(at["accuracy"] if at else None, "{:.0%}")])
        if not rows:
            return []
        budget = self.assumptions.escalation_budget
        return [(f"Adapters: each base+adapter beside its base on the task (accuracy with {budget * 100:g} % "
                 "escalated: the escalation view's budget)",
                 ["model", "items", "valid", "exact", "fields", "p50 s", "AUROC", f"with {budget * 100:g} % escalated"],
                 rows)]

    def _confidence_tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        """The confidence section (:mod:`edgeslm.bench.confidence`): AUROC and ECE of each score per
        dataset and model, and which candidate ranks best across them."""
        results = {m: s["confidence"] for m, s in self.sections.items() if isinstance(s, dict) and s.get("confidence")}
        if not results:
            return []
        from .confidence import choose

        def f(v: Any, fmt: str = "{:.2f}") -> str:
            return "-" if v is None else fmt.format(v)

        names = next(iter(results.values()))["scores"]
        cells = [(model, ds, d) for model, r in results.items() for ds, d in r["datasets"].items()]
        out = [("Confidence on outside data: the datasets (right = the oracle accepts the greedy answer)",
                ["model", "dataset", "items", "valid", "right", "accuracy", "held-out right / wrong", "seconds"],
                [[model, ds, str(d["all"]["items"]), str(d["all"]["valid"]), str(d["all"]["right"]),
                  f(d["all"]["accuracy"], "{:.0%}"),
                  f"{d['heldout']['right']} / {d['heldout']['valid'] - d['heldout']['right']}",
                  f(results[model].get("seconds", {}).get(ds), "{:.0f}")] for model, ds, d in cells])]
        for metric, what in (("auroc", "AUROC for 'right' (higher is better)"),
                             ("ece", "ECE of the raw score as a probability (10 equal-mass bins; lower is better)")):
            out.append((f"Confidence on outside data: {what}, held-out half (all items)",
                        ["score", *[f"{model} {ds}" for model, ds, _ in cells]],
                        [[k, *[f"{f(d['heldout'][metric].get(k))} ({f(d['all'][metric].get(k))})" for _, _, d in cells]]
                         for k in names]))
        pick = choose(results)
        default = next(iter(results.values())).get("default")
        marks = (("<- best on select", pick["best"]), ("<- default", default))
        rows = [[k, f(c["mean_select"]), f(c["mean_heldout"]), f(c["min_heldout"]),
                 *[f(c["heldout_by_model"].get(m)) for m in results], f(c["mean_all"]),
                 " ".join(x for x, name in marks if name == k)] for k, c in pick["candidates"].items()]
        out.append(("Confidence: mean AUROC over every dataset and model (chosen on the select half, judged on the "
                    "held-out half; a dataset counts where its half has 5 right and 5 wrong answers)",
                    ["score", "mean select", "mean held-out", "lowest held-out", *[f"held-out {m}" for m in results],
                     "mean all", ""], rows))
        return out

    def render(self, console: Any) -> None:
        from rich.table import Table

        for title, header, rows in self.tables():
            t = Table(title=title, title_justify="left")
            for h in header:
                t.add_column(h)
            for row in rows:
                t.add_row(*row)
            console.print(t)
        for n in self.notes:
            console.print(f"note: {n}", markup=False, highlight=False)

    def markdown(self) -> str:
        parts = [f"# edgeslm bench, {self.started_at}{' (quick)' if self.quick else ''}\n"]
        for title, header, rows in self.tables():
            parts.append(f"## {title}\n")
            parts.append("| " + " | ".join(header) + " |")
            parts.append("|" + "---|" * len(header))
            parts += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
            parts.append("")
        parts += [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"
