"""Escalation policy: when a local answer is handed to a bigger model, and how the hand-off runs.

An :class:`Escalation` is off unless given. It triggers on

* ``"invalid"``: no valid local answer (``ExtractionFailed``, a tool call that could not be
  produced), when ``on_invalid`` (the default);
* ``"low_confidence"``: the local score below ``min_confidence`` (a number, or a
  :class:`~edgeslm.escalation.calibration.CalibrationReport` whose threshold and calibrator are used);
* ``"predicate"``: the app's ``when(request, local_result)`` returned true.

The hand-off (:meth:`Escalation.escalate`) never costs the local answer: the target runs in a
worker thread and the caller stops waiting after ``timeout`` seconds; a refused connection, an
HTTP error, a timeout or an answer that fails the schema (or the tool schemas) all come back as
an outcome with ``escalated=False`` and ``error`` saying what happened.

Privacy: ``redact`` runs on every string of the request a target sees (message texts and names,
tool-call arguments in the history as the JSON text that is sent, the local answer and its error)
before it leaves, with JSON's escapes of non-ASCII characters (``Jos\\u00e9``) written out first,
so a redactor matching the real text matches. Schemas and tool definitions are sent as they are:
they are the app's own code, and rewriting them would change what the answer must match.
``audit_log`` gets one JSON line per triggered request; without ``audit_content=True`` it holds no
text of the request or the reply (its ``error`` says what happened: a kind, an HTTP status, never a
server's message, which may echo user text); with it, the redacted request and the full error,
redacted. ``record_to`` gets each request answered by the target as a chat fine-tuning example
(``{"messages": [...]}``, redacted).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import EdgeSLMError, EscalationError, InvalidRequestError
from .calibration import CalibrationReport
from .requests import (
    MAX_ANSWER_BYTES,
    CloudAnswer,
    EscalationOutcome,
    EscalationRequest,
    EscalationStats,
    Trigger,
    _append_line,
    _as_answer,
    _call_with_deadline,
    _check_path,
    _classify,
    _redact_value,
    _target_name,
    _utcnow,
    _validate_data,
    _validate_tool_calls,
    redact_request,
)

__all__ = [
    "CloudAnswer",
    "Escalation",
    "EscalationOutcome",
    "EscalationRequest",
    "EscalationStats",
    "Trigger",
]

# ------------------------------------------------------------------------------------------- policy


class Escalation:
    """Hand a request to a bigger model when the local answer is missing, unsure, or the app asks.

    ``target``: any callable ``target(request) -> answer`` (an :class:`EscalationRequest` in; a
    :class:`CloudAnswer`, a JSON string, a dict of data or a list of tool calls out) or an
    :class:`edgeslm.OpenAICompatible`. ``min_confidence``: a number in [0, 1], or a
    :class:`CalibrationReport` (or the path of a saved one). ``budget``: the most hand-offs as a
    share of calls seen by this object, a hard cap (``ceil(budget * calls)``) on top of any
    threshold. ``timeout``: seconds the caller waits at most for the target. ``max_answer_bytes``:
    the largest answer taken from the target (its text and tool calls, UTF-8; default 1 MiB, where a
    local answer is bounded by ``max_tokens``): a larger one is not used, and ``escalation_error``
    says so.
    """

    def __init__(
        self,
        target: Callable[..., Any],
        min_confidence: float | CalibrationReport | str | os.PathLike[str] | None = None,
        budget: float | None = None,
        on_invalid: bool = True,
        when: Callable[[EscalationRequest, Any], bool] | None = None,
        redact: Callable[[str], str] | None = None,
        audit_log: str | os.PathLike[str] | None = None,
        record_to: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        *,
        audit_content: bool = False,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        if not callable(target):
            raise InvalidRequestError(
                f"target must be callable, not {type(target).__name__}",
                hint="pass edgeslm.OpenAICompatible(base_url=..., model=...) or a function(request) -> answer",
            )
        self.target = target
        self.report: CalibrationReport | None = None
        self.min_confidence: float | None = None
        if isinstance(min_confidence, (str, os.PathLike)):
            min_confidence = CalibrationReport.load(min_confidence)
        if isinstance(min_confidence, CalibrationReport):
            self.report = min_confidence
        elif min_confidence is not None:
            if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)) \
                    or not 0.0 <= float(min_confidence) <= 1.0:
                raise InvalidRequestError(
                    f"min_confidence must be a number in [0, 1] or a CalibrationReport, not {min_confidence!r}",
                    hint="use edgeslm.calibrate(model, examples, schema=..., budget=...) to pick one",
                )
            self.min_confidence = float(min_confidence)
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not 0.0 < float(budget) <= 1.0):
            raise InvalidRequestError(f"budget must be a share in (0, 1], not {budget!r}",
                                      hint="e.g. budget=0.05 sends at most 5 % of calls to the target")
        self.budget = None if budget is None else float(budget)
        if not isinstance(on_invalid, bool):
            raise InvalidRequestError("on_invalid must be True or False", hint="on_invalid=True escalates failures")
        self.on_invalid = on_invalid
        for name, fn in (("when", when), ("redact", redact)):
            if fn is not None and not callable(fn):
                raise InvalidRequestError(f"{name} must be a function, not {type(fn).__name__}",
                                          hint=f"pass {name}=lambda ...: ... or leave it out")
        self.when = when
        self.redact = redact
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not math.isfinite(timeout) or timeout <= 0:
            raise InvalidRequestError(f"timeout must be a positive number of seconds, not {timeout!r}",
                                      hint="e.g. timeout=10.0")
        self.timeout = float(timeout)
        if isinstance(max_answer_bytes, bool) or not isinstance(max_answer_bytes, int) or max_answer_bytes < 1:
            raise InvalidRequestError(f"max_answer_bytes must be an int >= 1, not {max_answer_bytes!r}",
                                      hint=f"the default is {MAX_ANSWER_BYTES:,}")
        self.max_answer_bytes = max_answer_bytes
        self.audit_log = _check_path(audit_log, "audit_log")
        self.record_to = _check_path(record_to, "record_to")
        self.audit_content = bool(audit_content)
        if self.min_confidence is None and self.report is None and not on_invalid and when is None:
            raise InvalidRequestError("this escalation can never trigger",
                                      hint="set min_confidence=, on_invalid=True or when=")
        self.stats = EscalationStats()

    def __repr__(self) -> str:
        conf = f"report({self.report.score} < {self.report.threshold:.4g})" if self.report else self.min_confidence
        return (f"Escalation(target={_target_name(self.target)!r}, min_confidence={conf}, budget={self.budget}, "
                f"on_invalid={self.on_invalid}, timeout={self.timeout})")

    # -------------------------------------------------------------- decisions
    def calibrated(self, score: float) -> float:
        """The confidence to show for a raw score: calibrated with a report, else unchanged."""
        return self.report.confidence(score) if self.report is not None else score

    def decide(
        self,
        request: EscalationRequest,
        local_result: Any,
        confidence: float | None,
        error: BaseException | None = None,
        *,
        scores: Mapping[str, float] | None = None,
    ) -> Trigger | None:
        """Which trigger fires, if any. Pure: counts nothing, sends nothing.

        With *error* (no valid local answer) only ``on_invalid`` decides. Otherwise a report
        compares its own score (``scores[report.score]``, else *confidence*) with its threshold; a
        number compares *confidence*. ``when`` runs last; its exceptions propagate.
        """
        if error is not None:
            return "invalid" if self.on_invalid else None
        if self.report is not None:
            s = (scores or {}).get(self.report.score, confidence)
            if s is not None and self.report.escalates(s):
                return "low_confidence"
        elif self.min_confidence is not None and confidence is not None and confidence < self.min_confidence:
            return "low_confidence"
        if self.when is not None and self.when(request, local_result):
            return "predicate"
        return None

    def handle(
        self,
        request: EscalationRequest,
        local_result: Any,
        confidence: float | None,
        error: BaseException | None = None,
        *,
        scores: Mapping[str, float] | None = None,
        model_class: type | None = None,
    ) -> EscalationOutcome | None:
        """Decide, hand off within the budget, count: ``None`` when nothing triggered."""
        trigger = self.decide(request, local_result, confidence, error, scores=scores)
        if trigger is None:
            self.stats.record(None)
            return None
        request.trigger = trigger
        if request.confidence is None:
            request.confidence = confidence
        if error is not None and request.local_error is None:
            request.local_error = getattr(error, "message", None) or str(error)
        if not self.stats.reserve(self.budget):
            out = EscalationOutcome(trigger, error=f"escalation budget of {self.budget:g} of calls is used up",
                                    error_kind="budget", target=_target_name(self.target))
            self._audit(request, out, None)
        else:
            out = self.escalate(request, model_class=model_class)
        self.stats.record(out)
        return out

    # -------------------------------------------------------------- hand-off
    def escalate(self, request: EscalationRequest, *, model_class: type | None = None) -> EscalationOutcome:
        """Send *request* (redacted) to the target, wait at most ``timeout``, validate the answer.

        Never raises for what the target does; writes the audit and dataset lines.
        """
        name = _target_name(self.target)
        trigger = request.trigger or "predicate"
        t0 = time.monotonic()
        try:
            sent = redact_request(request, self.redact)
        except Exception as exc:  # nothing leaves when redaction fails
            out = EscalationOutcome(trigger, error=f"redact failed, nothing was sent: {type(exc).__name__}: {exc}",
                                    error_kind="redact", target=name)
            self._audit(request, out, None, f"redact failed ({type(exc).__name__}), nothing was sent")
            return out
        sent.timeout = self.timeout
        sent.deadline = t0 + self.timeout
        answer: CloudAnswer | None = None
        sent_bytes: int | None = None
        summary: str | None = None
        try:
            answer = _as_answer(_call_with_deadline(self.target, sent, self.timeout))
            size = _answer_size(answer)
            if size > self.max_answer_bytes:
                raise EscalationError(f"the target's answer is {size:,} bytes, over max_answer_bytes="
                                      f"{self.max_answer_bytes:,}; it was not used")
            out = self._accept(sent, answer, model_class, trigger, name)
        except TimeoutError as exc:
            out = EscalationOutcome(trigger, error=f"the target did not answer within {self.timeout:g} s ({exc})",
                                    error_kind="timeout", target=name)
            summary = f"the target did not answer within {self.timeout:g} s"
        except Exception as exc:
            sent_bytes = getattr(exc, "bytes_sent", None)
            kind, msg = _classify(exc)
            summary = _summary(kind, exc, msg)
            if isinstance(exc, EdgeSLMError) and not isinstance(exc, EscalationError):
                kind, msg = "target", str(exc)
                summary = f"the target failed ({type(exc).__name__})"
            out = EscalationOutcome(trigger, error=msg, error_kind=kind, target=name)
        out.latency_s = time.monotonic() - t0
        if answer is not None and answer.bytes_sent is not None:
            sent_bytes = answer.bytes_sent
        out.bytes_sent = sent_bytes if sent_bytes is not None else _size(sent)
        if answer is not None:
            out.usage = answer.usage
            out.bytes_received = answer.bytes_received if answer.bytes_received is not None else _answer_size(answer)
        self._audit(sent, out, answer, summary)
        if out.escalated and self.record_to is not None:
            try:
                _append_line(self.record_to, _dataset_line(sent, out))
                out.recorded = True
            except OSError as exc:  # a full disk or a path gone bad must not cost the answer: say so
                out.recorded = False
                out.error = (out.error + "; " if out.error else "") + f"record_to {self.record_to} not written: {exc}"
        return out

    def _accept(self, req: EscalationRequest, answer: CloudAnswer, model_class: type | None, trigger: str,
                name: str) -> EscalationOutcome:
        model = answer.model or None
        if req.kind == "extract" or (req.kind == "chat" and req.schema is not None):
            if answer.tool_calls:
                raise EscalationError("the target answered with tool calls instead of JSON")
            try:
                value = json.loads(answer.content or "")
            except ValueError as exc:
                raise EscalationError(f"the target's answer is not JSON: {exc}") from None
            data, errors = _validate_data(value, req.schema, model_class)
            if errors:
                raise EscalationError(f"the target's answer does not match the schema: {'; '.join(errors)}")
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            return EscalationOutcome(trigger, True, data=data, text=text, model=model, target=name)
        if req.kind == "tools":
            calls, errors = _validate_tool_calls(req, answer.tool_calls, answer.content)
            if errors:
                raise EscalationError(f"the target's tool calls are invalid: {'; '.join(errors[:3])}")
            return EscalationOutcome(trigger, True, text=answer.content or "", tool_calls=calls, model=model,
                                     target=name)
        if answer.tool_calls or not isinstance(answer.content, str) or not answer.content.strip():
            raise EscalationError("the target's answer has no text")
        return EscalationOutcome(trigger, True, text=answer.content, model=model, target=name)

    # -------------------------------------------------------------- records
    def _audit(self, sent: EscalationRequest, out: EscalationOutcome, answer: CloudAnswer | None,
               summary: str | None = None) -> None:
        """One audit line. Its ``error`` is *summary* (what happened, without any text of the request
        or the reply: servers echo user text in their errors) unless ``audit_content``, and then the
        full error, redacted."""
        if self.audit_log is None:
            return
        error = out.error if out.error is None or out.error_kind == "budget" else summary or out.error_kind
        if self.audit_content and out.error is not None:
            try:
                error = _redact_value(out.error, self.redact) if self.redact is not None else out.error
            except Exception:
                pass  # keep the summary
        rec: dict[str, Any] = {
            "time": _utcnow(),
            "kind": sent.kind,
            "trigger": out.trigger,
            "confidence": sent.confidence,
            "target": out.target,
            "outcome": "escalated" if out.escalated else ("skipped" if out.error_kind == "budget" else "failed"),
            "model": out.model,
            "bytes_sent": out.bytes_sent if out.error_kind not in ("budget", "redact") else 0,
            "bytes_received": answer.bytes_received if answer else None,
            "latency_s": round(out.latency_s, 6),
            "error_kind": out.error_kind,
            "error": error,
        }
        if self.audit_content and out.error_kind not in ("budget", "redact"):
            rec["request"] = sent.to_dict()  # already redacted: what left the device
            rec["answer"] = (json.loads(out.text) if out.data is not None and out.text else
                             {"content": out.text, "tool_calls": out.tool_calls} if out.escalated else None)
        try:
            _append_line(self.audit_log, rec)
        except OSError as exc:  # an unwritable log must not cost the answer; say so on the outcome
            out.error = (out.error + "; " if out.error else "") + f"audit log not written: {exc}"


def _summary(kind: str, exc: BaseException, msg: str) -> str:
    """What the audit log says of a failure without ``audit_content``: its kind, an HTTP status, the
    exception's type, the reason before any detail; never text from the request or the reply."""
    if kind == "http":
        return f"HTTP {getattr(exc, 'status_code', '?')} from the target"
    if kind == "timeout":
        return "the target timed out"
    if kind == "connection":
        return f"could not reach the target ({type(exc).__name__})"
    if kind == "invalid_answer":
        return msg.split(":", 1)[0][:200]  # "the target's answer does not match the schema", "...is not JSON"
    return f"the target failed ({type(exc).__name__})"


def _size(req: EscalationRequest) -> int:
    return len(json.dumps(req.to_dict(), ensure_ascii=False, default=str).encode("utf-8"))


def _answer_size(answer: CloudAnswer) -> int:
    """Bytes of a reply whose target did not report them: its text and tool calls."""
    n = len((answer.content or "").encode("utf-8"))
    if answer.tool_calls:
        n += len(json.dumps(answer.tool_calls, ensure_ascii=False, default=str).encode("utf-8"))
    return n


def _dataset_line(sent: EscalationRequest, out: EscalationOutcome) -> dict[str, Any]:
    """A chat fine-tuning example: the (redacted) conversation plus the target's answer."""
    reply: dict[str, Any] = {"role": "assistant", "content": out.text or None}
    if out.tool_calls:
        reply["tool_calls"] = [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in out.tool_calls
        ]
    elif reply["content"] is None:
        reply["content"] = ""
    line: dict[str, Any] = {"messages": [*sent.messages, reply]}
    if sent.tools:
        line["tools"] = sent.tools
    return line
