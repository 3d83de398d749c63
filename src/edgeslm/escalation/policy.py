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

import copy
import datetime as _dt
import json
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._errors import EdgeSLMError, EscalationError, InvalidRequestError
from .calibration import CalibrationReport

__all__ = [
    "CloudAnswer",
    "Escalation",
    "EscalationOutcome",
    "EscalationRequest",
    "EscalationStats",
    "Trigger",
]

#: The largest answer an :class:`Escalation` takes from its target by default (bytes of UTF-8).
MAX_ANSWER_BYTES = 2**20

Trigger = Literal["invalid", "low_confidence", "predicate"]
Kind = Literal["extract", "chat", "tools"]


@dataclass
class EscalationRequest:
    """What a target is asked: the conversation, and the schema or tools the answer must follow.

    ``local`` is the local answer in JSON form (the data, the text, or the tool calls as
    ``{"name", "arguments"}``), ``None`` when there was none; ``timeout`` is the seconds the
    target has and ``deadline`` the ``time.monotonic()`` at which they end (targets should give up
    by then; the caller stops waiting anyway).
    """

    kind: Kind
    messages: list[dict[str, Any]]
    schema: Any = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    max_tokens: int | None = None
    local: Any = None
    local_error: str | None = None
    confidence: float | None = None
    trigger: str | None = None
    timeout: float = 10.0
    deadline: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (used by the audit log and to estimate the bytes a plain callable sends)."""
        return {
            "kind": self.kind,
            "messages": self.messages,
            "schema": self.schema,
            "tools": self.tools,
            "tool_choice": self.tool_choice,
            "parallel_tool_calls": self.parallel_tool_calls,
            "max_tokens": self.max_tokens,
            "local": self.local,
            "local_error": self.local_error,
            "confidence": self.confidence,
            "trigger": self.trigger,
        }


@dataclass
class CloudAnswer:
    """A target's reply. ``tool_calls`` are ``{"id", "name", "arguments"}`` dicts (arguments a dict
    or a JSON string). ``bytes_sent`` / ``bytes_received``: request / response body sizes, when
    the target knows them. ``usage``: the token counts the target reported (``prompt_tokens``,
    ``completion_tokens``, ``total_tokens``), when it did."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    finish_reason: str | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    usage: dict[str, int] | None = None


@dataclass
class EscalationOutcome:
    """The result of one triggered request.

    ``escalated`` is true when a valid answer from the target is to be used: then ``data``
    (extraction, validated), ``text`` and ``tool_calls`` (validated) hold it and ``model`` names
    the model that answered. Otherwise ``error`` says why the local answer stands. ``usage`` and
    ``bytes_received`` come from the target's reply when there was one (valid or not).
    """

    trigger: str
    escalated: bool = False
    error: str | None = None
    error_kind: str | None = None  # timeout, connection, http, invalid_answer, redact, target, budget
    data: Any = None
    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    target: str = ""
    latency_s: float = 0.0
    bytes_sent: int | None = None
    bytes_received: int | None = None
    usage: dict[str, int] | None = None
    recorded: bool | None = None  # the answer's line in record_to: written, not written (see error), no record_to


class EscalationStats:
    """Thread-safe counters for ``model.stats()``: calls seen, how many stayed local, triggers,
    hand-offs that answered or failed, and the escalation rate (answered / calls)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.local = 0
        self.escalated = 0
        self.handed_off = 0
        self.triggers: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.bytes_sent = 0
        self.latency_s = 0.0

    def record(self, outcome: EscalationOutcome | None) -> None:
        """Count one call: ``None`` for a call that stayed local without a trigger."""
        with self._lock:
            self.calls += 1
            if outcome is None:
                self.local += 1
                return
            self.triggers[outcome.trigger] += 1
            if outcome.escalated:
                self.escalated += 1
            else:
                self.local += 1
                self.failures[outcome.error_kind or "error"] += 1
            self.bytes_sent += outcome.bytes_sent or 0
            self.latency_s += outcome.latency_s

    def reserve(self, budget: float | None) -> bool:
        """Take one hand-off if it keeps hand-offs within ``ceil(budget * calls)``, this call counted.

        Calls still in flight are not counted yet, so concurrency can only make it stricter.
        """
        with self._lock:
            if budget is not None and self.handed_off + 1 > math.ceil(budget * (self.calls + 1) - 1e-9):
                return False
            self.handed_off += 1
            return True

    def snapshot(self) -> dict[str, Any]:
        """A plain dict of the counters and ``escalation_rate``."""
        with self._lock:
            handed = self.handed_off
            return {
                "calls": self.calls,
                "local": self.local,
                "escalated": self.escalated,
                "handed_off": handed,
                "escalation_rate": self.escalated / self.calls if self.calls else 0.0,
                "triggers": dict(self.triggers),
                "failures": dict(self.failures),
                "bytes_sent": self.bytes_sent,
                "mean_latency_s": self.latency_s / handed if handed else 0.0,
            }


# ------------------------------------------------------------------------------------------- files

_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _append_line(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line; one lock per file, so threads never interleave a line."""
    key = os.path.abspath(path)
    with _FILE_LOCKS_GUARD:
        lock = _FILE_LOCKS.setdefault(key, threading.Lock())
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    with lock, open(path, "a", encoding="utf-8") as f:
        f.write(line)


def _check_path(value: Any, name: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidRequestError(f"{name} must be a file path, not {type(value).__name__}",
                                  hint=f"e.g. {name}='escalations.jsonl'")
    p = Path(value)
    if p.is_dir():
        raise InvalidRequestError(f"{name} {p} is a folder", hint="give a file path (JSON Lines)")
    if not p.parent.is_dir():
        raise InvalidRequestError(f"{name}: folder {p.parent} does not exist", hint="create it first")
    return p


# ------------------------------------------------------------------------------------------- redaction


def _redact_value(v: Any, redact: Callable[[str], str]) -> Any:
    """Apply *redact* to every string inside a JSON-like value (keys are left alone)."""
    if isinstance(v, str):
        out = redact(v)
        if not isinstance(out, str):
            raise TypeError(f"redact returned {type(out).__name__}, not str")
        return out
    if isinstance(v, Mapping):
        return {k: _redact_value(x, redact) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_redact_value(x, redact) for x in v]
    return v


_UNICODE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"
                             r"|(?<!\\)((?:\\\\)*)\\u([0-9a-fA-F]{4})")


def _unescape_unicode(text: str) -> str:
    """*text* with the JSON escapes of non-ASCII characters (``\\u00e9``) written as the characters,
    when *text* is JSON and means the same after: what a redactor matching the real text must see
    (``json.dumps`` escapes them by default)."""
    if "\\u" not in text:
        return text

    def sub(m: re.Match[str]) -> str:
        if m.group(2):  # a surrogate pair
            cp = 0x10000 + ((int(m.group(2), 16) - 0xD800) << 10) + (int(m.group(3), 16) - 0xDC00)
            return m.group(1) + chr(cp)
        cp = int(m.group(5), 16)
        if cp < 0x80 or 0xD800 <= cp < 0xE000:  # ASCII (quotes, controls) and lone surrogates stay escaped
            return m.group(0)
        return m.group(4) + chr(cp)

    try:
        value = json.loads(text)
        out = _UNICODE_ESCAPE.sub(sub, text)
        return out if json.loads(out) == value else text
    except (ValueError, RecursionError):
        return text


def _redact_text(text: str, redact: Callable[[str], str]) -> str:
    """*redact* on a string as it leaves, escaped non-ASCII characters written out first."""
    return _redact_value(_unescape_unicode(text), redact)


#: Fields of a message that are not user text (sent as they are).
_PLAIN_FIELDS = frozenset({"role", "tool_call_id", "type"})


def _redact_message(m: Mapping[str, Any], redact: Callable[[str], str]) -> dict[str, Any]:
    """A message with every string it carries redacted in the form it is sent (content, ``name``, any
    other field but ``role`` and ``tool_call_id``; tool-call arguments as the JSON text that leaves)."""
    out = dict(m)
    for key, value in m.items():
        if key in _PLAIN_FIELDS or key == "tool_calls":
            continue
        if isinstance(value, str):
            out[key] = _redact_text(value, redact)
        elif key == "content" and isinstance(value, list):  # content parts: redact text, keep the structure
            out[key] = [
                dict(p, text=_redact_text(p["text"], redact)) if isinstance(p, Mapping)
                and isinstance(p.get("text"), str) else _redact_value(p, redact)
                for p in value
            ]
        else:
            out[key] = _redact_value(value, redact)
    if m.get("tool_calls"):
        calls = []
        for c in m["tool_calls"]:
            c = copy.deepcopy(dict(c))
            fn = c.get("function")
            if isinstance(fn, dict) and "arguments" in fn:
                args = fn["arguments"]
                text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
                fn["arguments"] = _redact_text(text, redact)
            calls.append(c)
        out["tool_calls"] = calls
    return out


def redact_request(req: EscalationRequest, redact: Callable[[str], str] | None) -> EscalationRequest:
    """A copy of *req* with *redact* applied to everything user-derived (not schema, not tools)."""
    out = copy.copy(req)
    out.messages = [dict(m) for m in req.messages]
    if redact is None:
        return out
    out.messages = [_redact_message(m, redact) for m in req.messages]
    out.local = _redact_value(req.local, redact)
    out.local_error = _redact_text(req.local_error, redact) if req.local_error is not None else None
    return out


# ------------------------------------------------------------------------------------------- validation


def _validate_data(value: Any, schema: Any, model_class: type | None) -> tuple[Any, list[str]]:
    from ..decoding.normalize import make_validator

    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in make_validator(schema).iter_errors(value)
    ]
    if errors:
        return None, errors[:5]
    if model_class is not None:
        try:
            return model_class.model_validate(value), []  # type: ignore[attr-defined]
        except Exception as exc:  # pydantic.ValidationError, without importing pydantic
            return None, [f"pydantic: {exc}"]
    return value, []


def _tool_name(t: Mapping[str, Any]) -> str:
    fn = t.get("function", t)
    return str(fn.get("name", "")) if isinstance(fn, Mapping) else ""


def _validate_tool_calls(req: EscalationRequest, calls: list[dict[str, Any]], content: str | None) -> tuple[
    list[dict[str, Any]], list[str]
]:
    from ..decoding.normalize import make_validator

    specs = {_tool_name(t): (t.get("function", t) or {}).get("parameters") or {"type": "object"}
             for t in req.tools or []}
    choice = req.tool_choice
    out: list[dict[str, Any]] = []
    errors: list[str] = []
    for i, c in enumerate(calls):
        name, args = c.get("name"), c.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as exc:
                errors.append(f"call {i} ({name}): arguments are not JSON: {exc}")
                continue
        if name not in specs:
            errors.append(f"call {i}: {name!r} is not one of the tools ({', '.join(sorted(specs)) or 'none'})")
            continue
        if not isinstance(args, dict):
            errors.append(f"call {i} ({name}): arguments must be a JSON object")
            continue
        bad = [e.message for e in make_validator(specs[name]).iter_errors(args)]
        if bad:
            errors.append(f"call {i} ({name}): {'; '.join(bad[:3])}")
            continue
        out.append({"id": str(c.get("id") or f"call_{i}"), "name": name, "arguments": args})
    if isinstance(choice, Mapping):
        want = (choice.get("function") or {}).get("name")
        if not calls or any(c.get("name") != want for c in calls):
            errors.append(f"tool_choice asks for a call to {want!r}")
    elif choice == "required" and not calls:
        errors.append('tool_choice="required" but the answer has no tool call')
    elif choice == "none" and calls:
        errors.append('tool_choice="none" but the answer calls a tool')
    if not req.parallel_tool_calls and len(calls) > 1:
        errors.append(f"parallel_tool_calls=False but the answer has {len(calls)} calls")
    if not calls and not (content or "").strip():
        errors.append("the answer has neither text nor a tool call")
    return out, errors


def _as_answer(value: Any) -> CloudAnswer:
    """Normalize what a plain callable returned."""
    if isinstance(value, CloudAnswer):
        return value
    if isinstance(value, str):
        return CloudAnswer(content=value)
    if isinstance(value, (dict, bool, int, float)) or value is None:
        return CloudAnswer(content=json.dumps(value))
    if isinstance(value, list):
        calls = []
        for c in value:
            if hasattr(c, "name") and hasattr(c, "arguments"):
                c = {"id": getattr(c, "id", ""), "name": c.name, "arguments": c.arguments}
            calls.append(dict(c))
        return CloudAnswer(tool_calls=calls)
    raise TypeError(f"the target returned {type(value).__name__}; return a CloudAnswer, a str, a dict or a list")


def _classify(exc: BaseException) -> tuple[str, str]:
    """``(kind, message)`` for an exception raised by a target."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return "http", f"HTTP {status} from the target: {exc}"[:500]
    if "Timeout" in name or isinstance(exc, TimeoutError):
        return "timeout", f"the target timed out: {exc}"[:500]
    if "Connection" in name or isinstance(exc, (ConnectionError, OSError)):
        return "connection", f"could not reach the target ({name}): {exc}"[:500]
    if isinstance(exc, EscalationError):
        return "invalid_answer", str(exc.message)[:500]
    return "target", f"the target failed ({name}): {exc}"[:500]


#: Seconds the caller still gives the target's thread after the deadline to end (a target that keeps
#: its deadline, as :class:`~edgeslm.OpenAICompatible` does, ends at it).
END_GRACE_S = 0.25


def _call_with_deadline(fn: Callable[[EscalationRequest], Any], req: EscalationRequest, timeout: float) -> Any:
    """Run ``fn(req)`` in a daemon thread; raise :class:`TimeoutError` after *timeout* seconds
    (at ``req.deadline`` when set).

    A target that ignores its deadline keeps its thread, but nobody waits for it.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn(req)
        except BaseException as exc:  # delivered to the caller below
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="edgeslm-escalation", daemon=True)
    worker.start()
    deadline = req.deadline if req.deadline is not None else time.monotonic() + timeout
    if not done.wait(max(0.0, deadline - time.monotonic())):
        worker.join(END_GRACE_S)  # a target that keeps the deadline is ending now: do not leave it running
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _target_name(target: Any) -> str:
    describe = getattr(target, "describe", None)
    if callable(describe):
        return str(describe())
    return getattr(target, "__qualname__", None) or type(target).__name__


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


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
