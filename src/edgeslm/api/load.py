"""``edgeslm.load``: resolve a model reference, plan how to run it, and open it."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._errors import BackendUnavailableError, ModelNotFoundError, TemplateError, UnsafeTemplateError
from ..decoding.template import ChatTemplate, default_template, looks_instruct
from .model import Model

__all__ = ["load"]

DEVICES = ("auto", "cpu", "cuda", "metal", "gpu")


def _prewarm() -> threading.Thread | None:
    """Import what every extraction and tool call needs first (jsonschema: 0.1-0.15 s, or seconds on
    a busy machine) in a thread while the engine loads, so the first call of a process is not the
    slow one; ``None`` if it is imported already. ``edgeslm.decoding`` (imported by this module) has
    already deferred jsonschema's slow optional import, rfc3987_syntax, so the thread pays only for
    jsonschema itself. The caller joins the thread before ``load`` returns."""
    if "jsonschema" in sys.modules:
        return None

    def run() -> None:
        try:
            import jsonschema  # noqa: F401
        except BaseException:  # the call that needs it imports it again, and reports what fails
            pass

    thread = threading.Thread(target=run, name="edgeslm-prewarm", daemon=True)
    thread.start()
    return thread


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
    escalation: Any = None,
    batch_invariant: bool = False,
    adapters: Mapping[str, Any] | None = None,
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

    ``n_threads=None`` (llama.cpp): every core while the machine is idle, fewer while other programs
    take cores (:mod:`edgeslm.runtime.threads`: measured from the decode steps' times; with one of
    two cores busy, SmolLM2-135M keeps 55 % of its idle rate where a fixed count keeps 4 %). An
    ``n_threads`` the app chooses stays fixed; ``EDGESLM_ADAPTIVE_THREADS=0`` turns adapting off.

    ``escalation`` (an :class:`edgeslm.Escalation`, off unless given): the default hand-off of
    ``extract``, ``chat`` and tool calls to a bigger model when the local answer is invalid, unsure
    or the app's predicate says so. Nothing leaves the device without it.

    ``batch_invariant=True`` (llama.cpp on the CPU; ``device="auto"`` then means the CPU): a
    token's logits no longer depend on what else an engine call evaluates, so greedy
    ``extract_many`` gives exactly the results of ``extract`` one by one, at the cost of slower
    steps (SmolLM2-135M: 1.2-1.35x the time one at a time; see
    :class:`~edgeslm.backends.llamacpp.LlamaCppBackend` for what it changes and where it is not
    exact). ONNX Runtime GenAI models batch nothing, so their results are the same anyway.

    ``adapters``: LoRA adapters loaded beside the base weights, ``{"name": path}`` or
    ``{"name": (path, scale)}``; a path is a GGUF LoRA file, or a PEFT folder (``adapter_config.json``
    + ``adapter_model.safetensors``, as TRL, Unsloth, Axolotl or ``edgeslm finetune`` write it),
    converted once to GGUF and cached in the model store. Each is checked against the base first.
    Calls pick one with ``adapter="name"`` (or :meth:`Model.with_adapter`); switching costs no reload.
    On an ONNX Runtime GenAI folder (onnx backend) an adapter is an ``.onnx_adapter`` file made for that
    export, whose graph must take the LoRA weights as inputs (Olive's ExtractAdapters pass); it is
    checked against the graph first, and its scale must be 1.0 (ONNX Runtime applies it as exported).
    """
    from ..distill.adapters import parse_adapters
    from ._validate import check_escalation, check_int, check_model_ref

    check_model_ref(model)
    check_escalation(escalation)
    adapter_specs = parse_adapters(adapters)
    check_int(n_ctx, "n_ctx", minimum=1, allow_none=True, hint="pass n_ctx=None for the planner's choice, or e.g. 4096")
    check_int(n_threads, "n_threads", minimum=1, allow_none=True, hint="pass n_threads=None to use every core")
    if tool_format is not None:
        from ..tools.formats import get_format

        tool_format = get_format(tool_format).name
    from ..backends.registry import OpenRequest, backend_for_path, backend_names
    from ..runtime.planner import plan_for_path
    from ..store import resolve

    if backend != "auto" and backend not in backend_names():
        raise BackendUnavailableError(f"unknown backend {backend!r}", hint=f"use 'auto' or one of {backend_names()}")
    if device not in DEVICES:
        raise BackendUnavailableError(f"unknown device {device!r}", hint=f"use one of {DEVICES}")
    batch_invariant = bool(batch_invariant)
    if batch_invariant and device == "auto":
        device = "cpu"  # GPU kernels change with the batch size
    reason = None
    if quant is None:
        quant, reason = _planned_quant(model, n_ctx)
    resolved = resolve(model, quant=quant, download=True if download is None else download)
    spec, path = backend_for_path(Path(resolved.path), backend)
    # header checks: a hostile file never reaches the engine
    info = spec.validate(path) if spec.validate is not None else None
    entry = resolved.entry
    plan = plan_for_path(
        path,
        backend=spec.name,
        device=device,
        n_ctx=n_ctx,
        n_gpu_layers=n_gpu_layers,
        context_length=(entry.context_length if entry else None) or getattr(info, "context_length", None),
        info=info,
    )
    if backend == "auto":
        plan.why.insert(0, f"{spec.describe} -> {spec.name} backend")
    if reason and entry is not None:  # a cached variant was preferred to the planner's pick
        plan.variant = f"{entry.id}:{quant}"
        plan.why.insert(0, reason)
    name = entry.id if entry is not None else path.name
    if batch_invariant:
        plan.why.append("batch_invariant: on the CPU, engine calls of 2 to 32 tokens, no weight repacking, "
                        "flash attention on")
    request = OpenRequest(n_ctx=plan.n_ctx, device=plan.device, n_gpu_layers=plan.n_gpu_layers,
                          n_threads=n_threads, safe_mode=safe_mode, trusted=entry is not None, plan=plan,
                          batch_invariant=batch_invariant)
    warming = _prewarm()
    try:
        engine = spec.open(path, request)
    finally:
        if warming is not None:  # no import left half done when load returns: a fork after it is safe
            warming.join()
    engine.plan = plan
    try:
        template = _template(engine, chat_template)
        _load_adapters(engine, adapter_specs, info, plan)
    except BaseException:
        engine.close()
        raise
    return Model(engine, name=name, template=template, info=resolved, tool_format=tool_format, escalation=escalation)


def _load_adapters(engine: Any, specs: list[Any], info: Any, plan: Any) -> None:
    """Check each adapter against the base (converting PEFT folders), then load it in the engine."""
    if not specs:
        return
    from ..distill.adapters import resolve_adapter

    for spec in specs:
        if getattr(info, "tensor_shapes", None) is None:
            # not a GGUF base (an ONNX GenAI folder): the engine checks the file against its own graph
            engine.load_adapter(spec.name, str(spec.source), spec.scale)
            plan.why.append(f"adapter {spec.name!r}: {spec.source.name}")
            continue
        path = resolve_adapter(spec, info)
        engine.load_adapter(spec.name, str(path), spec.scale)
        plan.why.append(f"adapter {spec.name!r}: {spec.source.name} (scale {spec.scale:g})")


def _template(engine: Any, override: str | None) -> ChatTemplate | None:
    source = override or engine.chat_template
    bos = engine.token_text(engine.bos_id) if engine.bos_id is not None else ""
    eos = engine.token_text(engine.eos_id) if engine.eos_id is not None else ""
    stops: list[str] = []
    if not source:
        # No template in the model: the family's own turn format, else ChatML, else plain text;
        # plain text for a base model (no template and no instruction tuning in its name).
        source, stops = default_template(
            engine.metadata.get("general.architecture", ""),
            lambda t: len(engine.tokenize(t, special=True)) == 1,
            instruct=looks_instruct(engine.metadata),
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
