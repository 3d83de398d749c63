"""The ``edgeslm`` command line: chat, extract, doctor, and the model-store verbs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .._errors import EdgeSLMError

__all__ = ["main"]


def _console(stderr: bool = False):  # type: ignore[no-untyped-def]
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Tables stay readable in CI logs and pipes, where rich would assume 80 columns.
    width = None if stream.isatty() else 120
    return Console(stderr=stderr, highlight=False, width=width)


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import edgeslm

    return edgeslm.load(args.model, backend=args.backend, device=args.device, n_ctx=args.n_ctx)


def cmd_chat(args: argparse.Namespace) -> int:
    """Answer one question (or read it from stdin), streaming the reply."""
    question = " ".join(args.prompt) if args.prompt else sys.stdin.read()
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": question})
    out = _console()
    with _load(args) as model:
        last = None
        for chunk in model.chat(
            messages, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed, stream=True
        ):
            if chunk.delta:
                out.print(chunk.delta, end="", markup=False)
            last = chunk
        out.print()
        if last is not None and last.usage is not None and args.verbose:
            u = last.usage
            _console(stderr=True).print(
                f"[dim]{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens, "
                f"TTFT {u.time_to_first_token_s * 1000:.0f} ms, {u.decode_tokens_per_s:.1f} tok/s, "
                f"finish={last.finish_reason}[/dim]"
            )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Show the hardware, the engines, the self-checks and how each catalog model would run here."""
    import json

    from ..api.doctor import render, report

    out = _console()
    if args.check:
        _doctor_check(args, out)
    rep = report()
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
        return 0
    render(rep, out)
    if args.model:
        import edgeslm

        out.print(f"[bold]Plan for {args.model}[/bold]:\n{edgeslm.plan(args.model)}", markup=True, highlight=False)
    return 0


def _doctor_check(args: argparse.Namespace, out) -> None:  # type: ignore[no-untyped-def]
    """Run the engine self-check now, on --model (a .gguf) or the bundled SmolLM2."""
    from pathlib import Path

    from ..backends.llamacpp import system_info
    from ..runtime import selfcheck
    from ..runtime.hardware import cpu_info

    path: Path | None = Path(args.model) if args.model and Path(args.model).is_file() else None
    if path is None:
        from ..store import bundled_path

        path = bundled_path("smollm2-135m")
    check = selfcheck.ensure_engine(path, selfcheck.EngineOptions(0, True), cpu_features=cpu_info()[1],
                                    system_info=system_info())
    how = "remembered" if check.from_cache else f"checked now in {check.seconds:.1f} s"
    out.print(f"engine self-check ({how}, with {path.name}): {check.summary()}", markup=False, highlight=False)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark (``python -m edgeslm.bench``) with the remaining arguments."""
    from ..bench.__main__ import main as bench_main

    rest = args.bench_args
    return bench_main(rest[1:] if rest[:1] == ["--"] else rest)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default="smollm2-135m", help="catalog id, .gguf file or ONNX folder")
    p.add_argument("--backend", default="auto", help="auto (the one that opens the model), or a registered "
                   "backend: llama.cpp, onnx, or one a plugin adds")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "metal", "gpu"])
    p.add_argument("--n-ctx", type=int, default=None, help="context window in tokens")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="edgeslm", description="Small language models on your own device.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chat", help="ask a model one question")
    _common(p)
    p.add_argument("prompt", nargs="*", help="the question (stdin when omitted)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--verbose", "-v", action="store_true", help="print token counts and speed")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("doctor", help="show hardware, engines, self-checks and which models run here")
    p.add_argument("--model", "-m", default=None, help="also show the plan for this model")
    p.add_argument("--check", action="store_true", help="run the engine self-check now (bundled model or --model)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("bench", help="measure speed, schema compliance and tool calls here (python -m edgeslm.bench)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of python -m edgeslm.bench")
    p.set_defaults(func=cmd_bench)

    import importlib

    for mod, verbs in _VERB_MODULES.items():
        try:
            register = importlib.import_module(mod).register
        except ImportError as exc:  # the verbs stay, and say what is missing when used
            for verb in verbs:
                p = sub.add_parser(verb, help=f"unavailable: {_import_error(verb, exc).message}", add_help=False)
                p.add_argument("rest", nargs=argparse.REMAINDER)
                p.set_defaults(func=_unavailable(verb, exc))
            continue
        register(sub)
    return parser


#: The verbs each separately imported CLI module adds. They are listed here so that a module that
#: fails to import leaves verbs that name what is missing, instead of verbs that vanish.
_VERB_MODULES: dict[str, tuple[str, ...]] = {
    "edgeslm.cli.extract": ("extract",),
    "edgeslm.cli.calibrate": ("calibrate",),
    "edgeslm.cli.teach": ("teach",),
    "edgeslm.cli.finetune": ("finetune",),
    "edgeslm.cli.store": ("pull", "list", "rm", "verify"),
    "edgeslm.cli.serve": ("serve",),
}

#: pip's name for the dependencies whose import name differs.
_PIP_NAMES = {"llama_cpp": "llama-cpp-python", "onnxruntime_genai": "onnxruntime-genai",
              "huggingface_hub": "huggingface-hub", "openai": "edgeslm[cloud]", "pydantic": "edgeslm[pydantic]"}


def _import_error(verb: str, exc: ImportError) -> EdgeSLMError:
    """The error ``edgeslm <verb>`` reports when an import it needs fails: it names the module."""
    name = exc.name or str(exc)
    top = name.split(".")[0]
    if top == "edgeslm":
        hint = "this edgeslm installation is incomplete: reinstall it (pip install --force-reinstall edgeslm)"
    else:
        hint = f"install it (pip install {_PIP_NAMES.get(top, top.replace('_', '-'))}) or reinstall edgeslm"
    return EdgeSLMError(f"`edgeslm {verb}` cannot run: the module {name!r} cannot be imported ({exc})", hint=hint)


def _unavailable(verb: str, exc: ImportError) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise _import_error(verb, exc)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgeslm`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every option belongs to the benchmark's own parser
        argv[1:1] = ["--"]
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ImportError as exc:  # a dependency of this verb, imported when it runs
        return _report(_import_error(args.command, exc))
    except EdgeSLMError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        return 130


def _report(exc: EdgeSLMError) -> int:
    from rich.markup import escape

    _console(stderr=True).print(f"[bold red]error:[/bold red] {escape(str(exc))}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
