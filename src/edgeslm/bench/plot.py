"""``--plot DIR``: PNG charts of a bench report, with matplotlib (the optional extra ``edgeslm[plot]``).

* ``latency.png``: the distribution of per-item latency (your task, and extraction by backend);
* ``escalation.png``: exact-object accuracy against the share escalated, the budget marked;
* ``tokens_per_s.png``: decode tokens/s per model, system and backend.

A chart with nothing measured behind it in this run is not written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._errors import MissingExtraError

__all__ = ["require_matplotlib", "write_plots"]

INSTALL = 'pip install "edgeslm[plot]"'


def require_matplotlib() -> Any:
    """The ``matplotlib.pyplot`` module on the non-interactive Agg backend, or a clear error."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingExtraError(f"--plot needs matplotlib, which is not installed ({exc})", hint=INSTALL) from None
    matplotlib.use("Agg", force=True)  # files only: no display needed (CI, servers)
    import matplotlib.pyplot as plt

    return plt


def _latencies(report: Any) -> list[tuple[str, list[float]]]:
    out = []
    for model, sections in report.sections.items():
        task = sections.get("task") or {}
        for key, system in (("edgeslm", "edgeslm"), ("peer", "llama-cpp-python")):
            xs = [r["s"] for r in (task.get("rows") or {}).get(key, []) if r.get("s") is not None]
            if xs:
                out.append((f"{model}\ntask: {system}", xs))
        onnx = sections.get("onnx") or {}
        for backend, rows in (onnx.get("rows") or {}).items():
            xs = [r["s"] for r in rows if r.get("s") is not None]
            if xs:
                out.append((f"{model}\nonnx section:\nedgeslm on {backend}", xs))
    return out


def write_plots(report: Any, folder: str | Path) -> list[Path]:
    """Write the charts for *report* into *folder* (created); return the files written."""
    plt = require_matplotlib()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    lat = _latencies(report)
    if lat:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(lat)), 4.5))
        ax.boxplot([xs for _, xs in lat], showmeans=True)
        ax.set_xticks(range(1, len(lat) + 1), [name for name, _ in lat], fontsize=8)
        ax.set_ylabel("seconds per item")
        ax.set_title("Latency per item (this run)")
        ax.grid(axis="y", alpha=0.3)
        written.append(_save(plt, fig, out / "latency.png"))

    views = [v for v in report.escalation if v.get("curve")]
    if views:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for v in views:
            xs = [100 * p["share_escalated"] for p in v["curve"]]
            ys = [100 * p["accuracy"] for p in v["curve"]]
            ax.plot(xs, ys, marker="o", label=v["model"])
            for p in v["curve"]:
                if p["budgeted"]:
                    ax.scatter([100 * p["share_escalated"]], [100 * p["accuracy"]], s=160, facecolors="none",
                               edgecolors="red", zorder=3)
            budget = 100 * v["budget"]
        ax.axvline(budget, color="red", linestyle="--", alpha=0.5, label=f"budget {budget:g} %")
        cloud = views[0].get("cloud_accuracy_assumed")
        note = f"cloud right with p={cloud:g} (assumed)" if cloud is not None else "cloud answers measured"
        ax.set_xlim(-1, max(21.0, *(100 * p["share_escalated"] + 1 for v in views for p in v["curve"])))
        ax.set_xlabel("share escalated (%)")
        ax.set_ylabel("exact-object accuracy (%)")
        ax.set_title(f"Accuracy against share escalated ({note})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(plt, fig, out / "escalation.png"))

    speed = [r for r in report.records if r["scenario"] == "decode" and r.get("decode_tok_s") is not None]
    if speed:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(speed)), 4.5))
        labels = [f"{r['model']}\n{r['system']}\n({r['backend']})" for r in speed]
        colors = ["tab:blue" if r["system"] == "edgeslm" else "tab:gray" for r in speed]
        ax.bar(range(len(speed)), [r["decode_tok_s"] for r in speed], color=colors)
        ax.set_xticks(range(len(speed)), labels, fontsize=7)
        ax.set_ylabel("decode tokens/s (greedy)")
        ax.set_title("Decode speed per model (same run, same threads)")
        ax.grid(axis="y", alpha=0.3)
        written.append(_save(plt, fig, out / "tokens_per_s.png"))
    return written


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
