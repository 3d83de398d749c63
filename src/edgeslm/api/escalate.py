"""Glue between :class:`~edgeslm.Model` results and the escalation policy (``escalation/policy.py``).

``Model.extract`` / ``Model.chat`` call these around their local generation once the escalation
hook lands; until then they work with any function that produces a local result::

    req = extraction_request(text, schema)
    x = extract_with_escalation(esc, lambda: model.extract(text, schema), req)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._errors import ExtractionFailed, ToolCallError
from ..escalation.policy import Escalation, EscalationOutcome, EscalationRequest
from .results import ChatResult, Extraction, ToolCall, Usage

__all__ = ["chat_request", "chat_with_escalation", "extract_with_escalation", "extraction_request"]


def _json_data(data: Any) -> Any:
    return data.model_dump(mode="json") if hasattr(data, "model_dump") else data


def extraction_request(
    text: str,
    schema: Any,
    *,
    instructions: str | None = None,
    examples: Sequence[Any] | None = None,
    max_tokens: int | None = None,
) -> EscalationRequest:
    """The request a target gets for one extraction: the same conversation the local model saw."""
    from ..decoding.normalize import normalize_schema
    from .extract import extraction_messages

    plain = normalize_schema(schema)
    return EscalationRequest("extract", extraction_messages(text, plain, instructions, examples), schema=plain,
                             max_tokens=max_tokens)


def chat_request(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    schema: Any = None,
    max_tokens: int | None = None,
) -> EscalationRequest:
    """The request for a chat call: the app's messages, its tools as OpenAI dicts, or a JSON schema."""
    from ..tools.spec import as_tools

    specs = [t.to_openai() for t in as_tools(tools)] if tools else None
    kind = "tools" if specs else "chat"
    return EscalationRequest(kind, [dict(m) for m in messages], schema=schema, tools=specs,
                             tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls, max_tokens=max_tokens)


def _raise_with(error: BaseException, out: EscalationOutcome) -> None:
    error.escalation_trigger = out.trigger  # type: ignore[attr-defined]
    error.escalation_error = out.error  # type: ignore[attr-defined]
    raise error


def _kept_local(local: Any, error: Exception | None, out: Any) -> Any:
    """No escalation answered: the local result, marked with the trigger and the hand-off's error,
    or the local error (with the hand-off's outcome) when there is no local result."""
    if local is None:
        assert error is not None
        if out is None:
            raise error
        _raise_with(error, out)
    if out is not None:
        local.escalation_trigger = out.trigger
        local.escalation_error = out.error
    return local


def extract_with_escalation(
    escalation: Escalation,
    run_local: Callable[[], Extraction],
    request: EscalationRequest,
    *,
    model_class: type | None = None,
    scores: Mapping[str, float] | None = None,
) -> Extraction:
    """Run the local extraction, and hand it off when the policy says so.

    Returns the target's validated data (``escalated=True``), or the local result with
    ``escalation_error`` when the hand-off failed. With no local answer and no usable hand-off
    the :class:`ExtractionFailed` is raised, carrying ``escalation_error``. With a calibration
    report, ``confidence`` is the calibrated probability.
    """
    local: Extraction | None = None
    error: ExtractionFailed | None = None
    try:
        local = run_local()
    except ExtractionFailed as exc:
        error = exc
    raw = local.confidence if local is not None else None
    scores = {**(local.scores if local is not None else {}), **dict(scores or {})}
    if raw is not None:
        scores.setdefault("confidence", raw)
        request.local = _json_data(local.data) if local is not None else None
    out = escalation.handle(request, local, raw, error, scores=scores, model_class=model_class)
    if local is not None and escalation.report is not None:
        local.confidence = escalation.calibrated(scores.get(escalation.report.score, raw))  # type: ignore[arg-type]
    if out is None or not out.escalated:
        return _kept_local(local, error, out)
    return Extraction(
        data=out.data,
        confidence=local.confidence if local is not None else 0.0,
        raw=out.text or "",
        usage=local.usage if local is not None else Usage(),
        attempts=local.attempts if local is not None else getattr(error, "attempts", 0),
        escalated=True,
        support=local.support if local is not None else None,
        field_confidence=local.field_confidence if local is not None else {},
        escalation_trigger=out.trigger,
        escalation_error=out.error,  # the answer is the target's; a log or dataset line that failed is said here
        model=out.model or out.target,
    )


def chat_with_escalation(
    escalation: Escalation,
    run_local: Callable[[], ChatResult],
    request: EscalationRequest,
    *,
    confidence: float | None = None,
    model_class: type | None = None,
) -> ChatResult:
    """Like :func:`extract_with_escalation` for ``chat`` (text, JSON or tool calls). A local
    :class:`ToolCallError` or :class:`ExtractionFailed` is the ``"invalid"`` trigger."""
    local: ChatResult | None = None
    error: ToolCallError | ExtractionFailed | None = None
    try:
        local = run_local()
    except (ToolCallError, ExtractionFailed) as exc:
        error = exc
    if local is not None:
        request.local = ([{"name": c.name, "arguments": c.arguments} for c in local.tool_calls]
                         if local.tool_calls else local.text)
        if confidence is None:
            confidence = local.confidence
    out = escalation.handle(request, local, confidence, error, model_class=model_class)
    if out is None or not out.escalated:
        return _kept_local(local, error, out)
    calls = [ToolCall(c["id"], c["name"], c["arguments"]) for c in out.tool_calls]
    return ChatResult(
        text=out.text or "",
        finish_reason="tool_calls" if calls else "stop",
        usage=local.usage if local is not None else Usage(),
        model=out.model or out.target,
        tool_calls=calls,
        escalated=True,
        escalation_trigger=out.trigger,
        escalation_error=out.error,
    )
