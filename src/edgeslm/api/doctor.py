"""``edgeslm doctor``: what this machine offers, whether the engines work here, what runs here.

:func:`report` gathers the facts as plain data (tested directly); :func:`render` prints them as
rich tables, which degrade to plain text in a non-TTY terminal or a CI log.
"""

from __future__ import annotations

from typing import Any

from ..backends.registry import package_version
from ..runtime.hardware import Hardware, detect

__all__ = ["package_version", "render", "report"]

GIB = 1 << 30


def report(hardware: Hardware | None = None, *, n_ctx: int | None = None) -> dict[str, Any]:
    """Everything the doctor shows, as data: hardware, engines, self-checks, catalog models here."""
    from ..backends.registry import backend_names, get_backend
    from ..runtime.planner import gpu_install_hint, plan_variant
    from ..runtime.selfcheck import build_identity, known_checks
    from ..store import list_entries

    hw = hardware or detect()
    engines = {name: get_backend(name).doctor_row() for name in backend_names()}
    hint = gpu_install_hint(hw)
    build = build_identity()
    checks = []
    for c in known_checks():
        checks.append({
            "current_build": c.build == build, "llama_cpp_python": c.build.get("llama_cpp_python"),
            "requested": c.requested.describe(), "chosen": c.chosen.describe() if c.chosen else None,
            "summary": c.summary(), "seconds": round(c.seconds, 2), "checked_at": c.checked_at,
            "notes": c.notes,
        })
    models = []
    for e in list_entries():
        for v in e.variants:
            p = plan_variant(e, v, hw, n_ctx=n_ctx)
            row: dict[str, Any] = {"model": e.id, "variant": v.quant if v.format == "gguf" else v.label,
                                   "quant": v.quant, "format": v.format}
            if isinstance(p, str):
                row.update(runs=False, reason=p)
            else:
                row.update(runs=True, device=p.device, gpu_layers=p.n_gpu_layers, n_layers=p.n_layers,
                           n_ctx=p.n_ctx, memory_bytes=p.est_memory_bytes, gpu_memory_bytes=p.gpu_memory_bytes)
            models.append(row)
    return {
        "hardware": {
            "os": hw.os, "arch": hw.arch, "cpu": hw.cpu_model, "cpu_count": hw.cpu_count,
            "cpu_features": list(hw.cpu_features), "amx": hw.has_amx,
            "ram_total": hw.ram_total, "ram_available": hw.ram_available,
            "gpus": [{"name": g.name, "api": g.api, "memory_total": g.memory_total, "memory_free": g.memory_free,
                      "cuda_version": g.cuda_version} for g in hw.gpus],
        },
        "engines": engines,
        "gpu_install_hint": hint,
        "selfchecks": checks,
        "models": models,
    }


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def render(rep: dict[str, Any], console: Any) -> None:
    """Print a :func:`report` as rich tables."""
    from rich.table import Table

    hw = rep["hardware"]
    t = Table(title="Hardware", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("System", f"{hw['os']} {hw['arch']}")
    t.add_row("CPU", f"{hw['cpu'] or '?'} ({hw['cpu_count']} logical CPUs)")
    t.add_row("CPU features", ", ".join(hw["cpu_features"]) or "unknown")
    t.add_row("Intel AMX", "yes" if hw["amx"] else "no")
    t.add_row("RAM", f"{_gib(hw['ram_available'])} available of {_gib(hw['ram_total'])}")
    for g in hw["gpus"]:
        cuda = f", CUDA {g['cuda_version']}" if g.get("cuda_version") else ""
        t.add_row(f"GPU ({g['api']})", f"{g['name']}: {_gib(g['memory_free'])} free of {_gib(g['memory_total'])}{cuda}")
    if not hw["gpus"]:
        t.add_row("GPU", "none found")
    console.print(t)

    t = Table(title="Engines", title_justify="left")
    for col in ("engine", "version", "what it can use here"):
        t.add_column(col)
    for name, row in rep["engines"].items():
        t.add_row(f"{name} ({row.get('package') or '?'})", str(row.get("version") or "-"),
                  row.get("error") or row.get("summary") or "")
    console.print(t)
    if rep.get("gpu_install_hint"):
        console.print(f"[yellow]This machine has a GPU that the installed llama-cpp-python cannot use.[/yellow] "
                      f"For a GPU build: {rep['gpu_install_hint']}", markup=True, highlight=False)

    t = Table(title="Engine self-checks (one per llama.cpp build, CPU and load options)", title_justify="left")
    for col in ("build", "asked for", "runs with", "cost", "notes"):
        t.add_column(col)
    for c in rep["selfchecks"]:
        build = f"{c['llama_cpp_python']}{' (installed)' if c['current_build'] else ''}"
        t.add_row(build, c["requested"], c["chosen"] or "[red]every option crashed[/red]", f"{c['seconds']:.1f} s",
                  "; ".join(c["notes"]) or "")
    if not rep["selfchecks"]:
        t.add_row("-", "-", "not run yet (runs at the first load; `edgeslm doctor --check` runs it now)", "-", "")
    console.print(t)

    t = Table(title="Catalog models on this machine", title_justify="left")
    for col in ("model", "variant", "runs here", "device", "GPU layers", "context", "memory"):
        t.add_column(col, no_wrap=col in ("model", "variant", "memory"))
    for m in rep["models"]:
        if m["runs"]:
            layers = "all" if m["gpu_layers"] >= 999 else str(m["gpu_layers"])
            t.add_row(m["model"], m["variant"], "yes", m["device"], layers, str(m["n_ctx"]), _gib(m["memory_bytes"]))
        else:
            t.add_row(m["model"], m["variant"], f"[red]no[/red]: {m['reason']}", "-", "-", "-", "-")
    console.print(t)
