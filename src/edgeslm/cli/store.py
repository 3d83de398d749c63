"""``edgeslm pull | list | rm | verify``: the model-store subcommands.

``register(subparsers)`` adds them to the main argparse parser; each sets ``func`` to its handler,
which returns a process exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["cmd_list", "cmd_pull", "cmd_rm", "cmd_verify", "register"]


def _formats() -> list[str]:
    """The formats the registered engines serve (``gguf``, ``onnx``, a plugin's own)."""
    from ..backends.registry import formats

    return list(formats())


def register(subparsers: Any) -> None:
    """Add the ``pull``, ``list``, ``rm`` and ``verify`` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser("pull", help="download a model into the local cache and verify it")
    p.add_argument("model", help="catalog id (see `edgeslm list`) or hf://owner/repo/file.gguf")
    p.add_argument("--quant", help="quantization, e.g. Q4_K_M, Q8_0, int4")
    p.add_argument("--format", choices=_formats(), help="model format")
    p.add_argument("--device", help="for ONNX variants: cpu or cuda")
    p.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or `huggingface-cli login`)")
    p.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    p.set_defaults(func=cmd_pull)

    p = subparsers.add_parser("list", help="show the model catalog and what is cached")
    p.add_argument("--cached", action="store_true", help="only show cached files")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("rm", help="remove a cached model")
    p.add_argument("model", help="catalog id or hf://owner/repo/file")
    p.add_argument("--quant", help="only this quantization")
    p.add_argument("--format", choices=_formats(), help="only this format")
    p.set_defaults(func=cmd_rm)

    p = subparsers.add_parser("verify", help="re-hash every cached model file")
    p.set_defaults(func=cmd_verify)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def cmd_pull(args: argparse.Namespace) -> int:
    """Download (or find in the cache) a model and print its path."""
    from ..store.download import pull

    path = pull(
        args.model,
        quant=getattr(args, "quant", None),
        format=getattr(args, "format", None),
        device=getattr(args, "device", None),
        progress=not getattr(args, "no_progress", False),
        token=getattr(args, "token", None),
    )
    print(path)
    return 0


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.1f} TB"


def cmd_list(args: argparse.Namespace) -> int:
    """Print the catalog as a table, marking what is cached (or installed, for bundled models)."""
    import importlib.util

    from rich.table import Table

    from ..store.bundled import BUNDLED
    from ..store.cache import cached_models, cached_variant_path
    from ..store.catalog import list_entries
    from ..store.paths import cache_home

    console = _console()
    cached = cached_models()
    if not getattr(args, "cached", False):
        t = Table(title="edgeslm model catalog", title_justify="left")
        for col in ("id", "variant", "size", "memory", "context", "license", "status"):
            t.add_column(col, no_wrap=col in ("id", "variant"))
        for e in list_entries():
            for v in e.variants:
                if v.source == "bundled":
                    pkg = BUNDLED.get(e.id, "")
                    mod = pkg.replace("-", "_")
                    ok = importlib.util.find_spec(mod) is not None
                    status = "[green]installed[/]" if ok else 'pip install "edgeslm[tiny]"'
                else:
                    status = "[green]cached[/]" if cached_variant_path(v) else ""
                approx = "" if v.size_exact or any(f.size_exact for f in v.files) else "~"
                t.add_row(
                    e.id,
                    v.label + (" *" if v.default else ""),
                    approx + _size(v.total_size),
                    "~" + _size(e.memory_estimate(v)),
                    f"{e.context_length // 1024}k",
                    e.license + (" (gated)" if v.gated else ""),
                    status,
                )
        console.print(t)
        console.print("* default variant; memory = weights + KV cache for 4096 tokens (estimate)")
    t = Table(title=f"cached files in {cache_home()}", title_justify="left")
    for col in ("model", "file", "size", "revision", "verified by"):
        t.add_column(col)
    for cf in cached:
        t.add_row(
            cf.model_id or cf.repo,
            cf.filename,
            _size(cf.size),
            cf.revision if not cf.commit else f"{cf.revision} ({cf.commit[:8]})",
            cf.verified_by,
        )
    console.print(t if cached else "no downloaded models in the cache")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Delete a cached model's files."""
    from ..store.cache import remove

    removed = remove(args.model, quant=getattr(args, "quant", None), format=getattr(args, "format", None))
    if not removed:
        print(f"{args.model} is not in the cache", file=sys.stderr)
        return 1
    for p in removed:
        print(f"removed {p}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash every cached file; exit 1 if any is damaged."""
    from rich.table import Table

    from ..store.cache import verify_cache

    results = verify_cache()
    console = _console()
    if not results:
        console.print("the cache holds no models")
        return 0
    t = Table(title="cache verification", title_justify="left")
    for col in ("file", "ok", "detail"):
        t.add_column(col)
    for path, ok, reason in results:
        t.add_row(str(path), "[green]yes[/]" if ok else "[red]NO[/]", reason)
    console.print(t)
    bad = [p for p, ok, _ in results if not ok]
    if bad:
        console.print(f"[red]{len(bad)} damaged file(s):[/] remove them with `edgeslm rm <model>` and pull again")
        return 1
    return 0
