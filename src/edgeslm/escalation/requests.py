"""What an escalation hands over and gets back, and the rules every hand-off follows.

The request a target sees (:class:`EscalationRequest`) and its answer (:class:`CloudAnswer`), the
outcome of one hand-off (:class:`EscalationOutcome`) and the counters (:class:`EscalationStats`);
the privacy rules (``redact`` on every string that leaves, :func:`redact_request`), the checks an
answer must pass (the schema, the tool schemas, a size cap), and the deadline a target runs under
(:func:`_call_with_deadline`: a worker thread the caller stops waiting for). The policy that
decides when to hand off is :mod:`edgeslm.escalation.policy`.
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

from .._errors import EscalationError, InvalidRequestError

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
