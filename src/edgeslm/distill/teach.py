"""The teacher step of distillation: a bigger model labels the app's own texts for a schema.

    teacher = edgeslm.OpenAICompatible("https://api.openai.com/v1", "gpt-4.1-mini", api_key=key)
    report = edgeslm.teach("texts.jsonl", Invoice, teacher=teacher, out="train.jsonl", max_requests=500)

Each text goes to the teacher with the conversation edgeslm uses locally
(:func:`~edgeslm.api.escalate.extraction_request`), through :class:`~edgeslm.Escalation`: ``redact`` runs
on everything sent, the teacher has ``timeout`` seconds, and its answer must match the schema. Valid answers
are appended to ``out`` in the chat format of ``Escalation(record_to=...)``, so escalation logs and teacher
runs make one dataset.

A sidecar ``<out>.done`` (JSON Lines of ``{"key": sha256 of the text, "ok": bool}``, never the text) remembers
every text asked, so a rerun with the same ``out`` pays only for texts not labeled yet; failed ones are asked
again. ``out`` is only ever appended to (one flushed, fsynced line per label); a last line cut short by a
killed run is removed on the next one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from .._errors import DatasetError, EscalationError, InvalidRequestError
from ..escalation.policy import Escalation, EscalationOutcome, EscalationRequest, _target_name, redact_request

__all__ = ["MAX_CONSECUTIVE_FAILURES", "TeachReport", "teach"]

#: The run stops (:class:`EscalationError`) after this many failures in a row in which the teacher gave no
#: answer at all (timeout, connection, HTTP error, a teacher function that raised).
MAX_CONSECUTIVE_FAILURES = 5
_NO_ANSWER = frozenset({"timeout", "connection", "http", "target"})
_INPUT_HINT = 'each line a JSON string or an object with a "text" key, e.g. {"id": 7, "text": "Invoice 42 ..."}'


@dataclass
class TeachReport:
    """What a :func:`teach` run did.

    ``labeled``: texts the teacher labeled validly in this run (one line each in ``out``); ``skipped``:
    texts already labeled by an earlier run (or repeated in the input); ``failed``: ``(index, reason)`` of
    texts the teacher did not label validly (``index``: the text's position in ``texts``, 0-based; asked again
    by the next run); ``requests`` / ``tokens``: what
    was sent in this run (tokens as the teacher reported them, else estimated as bytes / 4); ``stopped``:
    ``"budget"`` when ``max_requests`` or ``max_tokens`` ended the run with ``remaining`` texts not asked.
    """

    labeled: int = 0
    skipped: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    requests: int = 0
    tokens: int = 0
    stopped: Literal["done", "budget"] = "done"
    out: str = ""
    seconds: float = 0.0
    remaining: int = 0

    def __str__(self) -> str:
        end = "done" if self.stopped == "done" else f"stopped by the budget, {self.remaining} texts left"
        return (f"{self.labeled} labeled, {self.skipped} already done, {len(self.failed)} failed; "
                f"{self.requests} requests, {self.tokens} tokens in {self.seconds:.1f} s ({end}) -> {self.out}")


# ------------------------------------------------------------------------------------------- input


def _read_texts(texts: Any) -> list[str]:
    """The texts to label: from a JSON Lines file, or an iterable of strings. Everything is checked here."""
    if isinstance(texts, (str, os.PathLike)):
        return _read_jsonl(Path(texts))
    if isinstance(texts, (bytes, Mapping)) or not isinstance(texts, Iterable):
        raise InvalidRequestError(f"texts must be a JSON Lines file path or a list of strings, not "
                                  f"{type(texts).__name__}", hint='e.g. texts="texts.jsonl" or texts=["...", "..."]')
    out: list[str] = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidRequestError(f"texts[{i}] is {type(t).__name__}, not str", hint="pass the texts as strings")
        if not t.strip():
            raise InvalidRequestError(f"texts[{i}] is empty", hint="leave empty texts out: there is nothing to label")
        out.append(t)
    return out


def _read_jsonl(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"the texts file {path} does not exist" if not path.exists() else f"{path} is not a file",
                           hint=f"give a JSON Lines file: {_INPUT_HINT}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read the texts file {path}: {exc}", hint="check the path and its permissions") \
            from None
    try:
        data = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        n = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}, line {n}: not UTF-8 text", hint="save the file as UTF-8") from None
    out: list[str] = []
    for n, line in enumerate(data.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:
            why = getattr(exc, "msg", None) or type(exc).__name__
            raise DatasetError(f"{path}, line {n}: not JSON ({why})", hint=_INPUT_HINT) from None
        if isinstance(value, dict):
            if "text" not in value:
                raise DatasetError(f'{path}, line {n}: the object has no "text" key', hint=_INPUT_HINT)
            value = value["text"]
        if not isinstance(value, str):
            raise DatasetError(f"{path}, line {n}: the text must be a string, not {type(value).__name__}",
                               hint=_INPUT_HINT)
        if not value.strip():
            raise DatasetError(f"{path}, line {n}: the text is empty", hint="remove the line: nothing to label")
        out.append(value)
    return out


def _check_budget(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{name} must be an int >= 0 or None, not {value!r}",
                                  hint=f"e.g. {name}=1000, or leave it None for no limit")
    return value


# ------------------------------------------------------------------------------------------- files


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _digest(messages: Any) -> str:
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _repair_tail(path: Path) -> None:
    """Finish a file's last line: one without its newline is a killed writer's and is cut off, unless it is
    a whole JSON value (a file written by another tool), which only gets its newline."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        start, pos = 0, size
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            i = f.read(step).rfind(b"\n")
            if i >= 0:
                start = pos + i + 1
                break
        f.seek(start)
        tail = f.read()
        try:
            json.loads(tail)
            whole = True
        except (ValueError, RecursionError):
            whole = False
        if whole:
            f.seek(size)
            f.write(b"\n")
        else:
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())


def _objects(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON Lines file; other and unreadable lines are skipped."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(rec, dict):
                yield rec


def _read_done(path: Path) -> dict[str, bool]:
    """``key -> ok`` from a ``.done`` file (ok once is ok for good; unreadable lines are ignored)."""
    done: dict[str, bool] = {}
    for rec in _objects(path):
        if isinstance(rec.get("key"), str):
            done[rec["key"]] = done.get(rec["key"], False) or rec.get("ok") is True
    return done


def _labeled_prompts(path: Path) -> set[str]:
    """Digests of the conversations (all messages but the answer) already labeled in a dataset file."""
    seen: set[str] = set()
    for rec in _objects(path):
        msgs = rec.get("messages")
        if isinstance(msgs, list) and len(msgs) >= 2 and not rec.get("tools"):
            seen.add(_digest(msgs[:-1]))
    return seen


def _append_done(path: Path, key: str, ok: bool) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"key": key, "ok": ok}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    with open(path, "ab") as f:  # append mode: writes nothing, and fsync works on every platform
        os.fsync(f.fileno())


def _tokens(res: EscalationOutcome) -> int:
    """Tokens one request cost: as the teacher reported them, else (bytes sent + received) / 4."""
    usage = res.usage or {}
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    if isinstance(usage.get("prompt_tokens"), int) or isinstance(usage.get("completion_tokens"), int):
        return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
    return math.ceil(((res.bytes_sent or 0) + (res.bytes_received or 0)) / 4)


class _Bar:
    """A rich progress bar when asked for, else nothing."""

    def __init__(self, on: bool, total: int) -> None:
        self._progress: Any = None
        if on:
            from rich.console import Console
            from rich.progress import Progress

            self._progress = Progress(console=Console(stderr=True))
            self._task = self._progress.add_task("teaching", total=total)

    def __enter__(self) -> _Bar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, report: TeachReport) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=report.labeled + report.skipped + len(report.failed),
                                  description=f"teaching: {report.labeled} labeled, {len(report.failed)} failed")


def _no_answer_error(res: EscalationOutcome, teacher: Any, timeout: float, out: Path) -> EscalationError:
    where = _target_name(teacher)
    hints = {
        "timeout": f"check that the server at {where} is up and answers within timeout={timeout:g} s "
                   "(give a slow model a longer timeout)",
        "connection": f"check the URL {where} and that the server is running and reachable",
        "http": f"check the URL, the model name and the API key for {where} (and the provider's rate limits)",
        "target": "check the teacher function: it raised on every text",
    }
    return EscalationError(
        f"the teacher failed {MAX_CONSECUTIVE_FAILURES} times in a row ({res.error_kind}); last: {res.error}",
        hint=f"{hints.get(res.error_kind or '', 'check the teacher')}; the labels so far are kept in {out}: "
             "run again with the same out to resume",
    )


# ------------------------------------------------------------------------------------------- teach


def teach(
    texts: Iterable[str] | str | os.PathLike[str],
    schema: Any,
    *,
    teacher: Callable[[EscalationRequest], Any],
    out: str | os.PathLike[str],
    instructions: str | None = None,
    examples: Sequence[Any] | None = None,
    redact: Callable[[str], str] | None = None,
    max_requests: int | None = None,
    max_tokens: int | None = None,
    timeout: float = 30.0,
    progress: bool = False,
    resume: bool = True,
) -> TeachReport:
    """Have ``teacher`` label ``texts`` for ``schema``; append the valid labels to ``out`` as chat examples.

    ``texts``: strings, or a JSON Lines file (each line a JSON string or ``{"text": ...}``; other keys such
    as ``"id"`` are ignored); all of it is checked before anything is sent. A text already labeled in
    ``out`` (by an earlier run, or repeated in ``texts``) is skipped. ``schema``: a JSON Schema dict or a
    pydantic class.
    ``teacher``: an :class:`edgeslm.OpenAICompatible` or a function ``(EscalationRequest) -> answer``.
    ``instructions`` / ``examples``: as for ``model.extract``, so the teacher sees the local prompt.
    ``redact``: runs on every text before it is sent or written. ``max_requests`` / ``max_tokens``: the
    run's budget (requests sent, failures included; tokens the teacher reported): the run stops before a
    request would pass it (for tokens: at the mean cost so far) and the report says ``stopped="budget"``.
    ``timeout``: seconds per request. ``resume=False`` refuses an ``out`` that already has lines.

    A text the teacher does not answer validly is counted in ``report.failed``; after
    :data:`MAX_CONSECUTIVE_FAILURES` failures in a row without any answer (timeouts, refused connections,
    HTTP errors) the run stops with :class:`EscalationError` (``.report`` holds the report so far).
    """
    t0 = time.monotonic()
    max_requests = _check_budget(max_requests, "max_requests")
    max_tokens = _check_budget(max_tokens, "max_tokens")
    for name, flag in (("progress", progress), ("resume", resume)):
        if not isinstance(flag, bool):
            raise InvalidRequestError(f"{name} must be True or False, not {flag!r}", hint=f"e.g. {name}=True")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequestError("instructions must be a string", hint="or leave it None for edgeslm's own")
    if out is None:
        raise InvalidRequestError("out is required", hint='e.g. out="train.jsonl" (JSON Lines, appended to)')
    esc = Escalation(teacher, on_invalid=True, redact=redact, timeout=timeout, record_to=out)
    out_path = esc.record_to
    assert out_path is not None
    if isinstance(texts, (str, os.PathLike)) and Path(texts).exists() and out_path.exists() \
            and Path(texts).resolve() == out_path.resolve():
        raise InvalidRequestError(f"out {out_path} is the texts file", hint="write the labels to another file")
    items = _read_texts(texts)

    from ..api.escalate import extraction_request
    from ..decoding.normalize import normalize_schema

    plain = normalize_schema(schema)
    model_class = schema if isinstance(schema, type) else None

    def request(text: str) -> EscalationRequest:
        try:
            return extraction_request(text, plain, instructions=instructions, examples=examples)
        except TypeError as exc:  # examples of the wrong shape
            raise InvalidRequestError(str(exc), hint="examples=[(text, expected_output), ...]") from None

    request(items[0] if items else "x")  # bad examples fail here, before anything is sent or touched

    done_path = out_path.with_name(out_path.name + ".done")
    size = out_path.stat().st_size if out_path.exists() else 0
    if size and not resume:
        raise InvalidRequestError(f"{out_path} already has lines and resume=False",
                                  hint="resume (the default) to add the texts not labeled yet, or delete the file "
                                       "to start over")
    if size:
        _repair_tail(out_path)
        size = out_path.stat().st_size
    done: dict[str, bool] = {}
    if not size:
        done_path.unlink(missing_ok=True)  # no label is kept: whatever it says is stale
    elif done_path.exists():
        _repair_tail(done_path)
        done = _read_done(done_path)

    report = TeachReport(out=str(out_path))
    pending: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    for i, text in enumerate(items):
        key = _key(text)
        if done.get(key) or key in seen:
            report.skipped += 1
        else:
            pending.append((i, text, key))
        seen.add(key)
    if pending and size:  # labeled but not noted in .done (a run killed between the two writes, a shared log)
        labeled = _labeled_prompts(out_path)
        still: list[tuple[int, str, str]] = []
        for i, text, key in pending:
            try:
                found = _digest(redact_request(request(text), redact).messages) in labeled
            except Exception:  # redact failing: escalate() reports it for this text
                found = False
            if found:
                _append_done(done_path, key, True)
                report.skipped += 1
            else:
                still.append((i, text, key))
        pending = still

    streak = 0
    with _Bar(progress, len(items)) as bar:
        bar.update(report)
        for n, (i, text, key) in enumerate(pending):
            mean = math.ceil(report.tokens / report.requests) if report.requests else 0
            if (max_requests is not None and report.requests >= max_requests) or (
                    max_tokens is not None and (report.tokens >= max_tokens or report.tokens + mean > max_tokens)):
                report.stopped, report.remaining = "budget", len(pending) - n
                break
            try:
                res = esc.escalate(request(text), model_class=model_class)
                if res.error_kind != "redact":  # nothing is sent when redact fails
                    report.requests += 1
                    report.tokens += _tokens(res)
                if res.escalated and res.recorded is False:  # the label is not on disk: stop, ask it again later
                    raise DatasetError(f"cannot write the labels to {out_path}: {res.error}",
                                       hint="check the disk space and permissions; run again to resume")
                if res.escalated:
                    _fsync(out_path)
                _append_done(done_path, key, res.escalated)
            except OSError as exc:
                raise DatasetError(f"cannot write the labels to {out_path}: {exc}",
                                   hint="check the disk space and permissions; run again to resume") from None
            if res.escalated:
                report.labeled += 1
                streak = 0
            else:
                report.failed.append((i, res.error or res.error_kind or "failed"))
                if res.error_kind in _NO_ANSWER:
                    streak += 1
                elif res.error_kind != "redact":
                    streak = 0
            bar.update(report)
            if streak >= MAX_CONSECUTIVE_FAILURES:
                report.remaining = len(pending) - n - 1
                report.seconds = time.monotonic() - t0
                err = _no_answer_error(res, teacher, esc.timeout, out_path)
                err.report = report  # type: ignore[attr-defined]
                raise err
    report.seconds = time.monotonic() - t0
    return report
