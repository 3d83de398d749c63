"""Server-side settings of ``edgeslm serve``: request limits and escalation, from a JSON or TOML file.

Nothing here can be set by a request. A config file looks like this (TOML; the same keys in JSON)::

    [limits]                      # every key optional
    max_body_bytes = 4194304      # larger request bodies: 413
    max_messages = 256            # more messages: 400
    max_tools = 64
    max_schema_bytes = 65536      # a response_format schema or tool schema larger (as JSON): 400
    max_schema_depth = 32         # ... or nested deeper: 400
    max_queue = 256               # requests waiting for the engine beyond this: 503
    send_timeout_s = 30           # a streaming client that reads nothing for this long is dropped

    [batching]
    batch_size = 8                # response_format requests decoded together at most (default: chosen
                                  # by the engine's probed decode gain; 1: one at a time); --batch-size overrides

    [escalation]                  # off unless present
    base_url = "https://api.openai.com/v1"
    model = "gpt-4.1-mini"
    api_key_env = "OPENAI_API_KEY"   # the key is read from this variable, never written in the file
    min_confidence = 0.6
    budget = 0.05
    timeout = 10.0
    audit_log = "escalations.jsonl"
    redact = ['\\b\\d{3}-\\d{2}-\\d{4}\\b', '[\\w.+-]+@[\\w-]+\\.[\\w.]+']
    on_invalid = true
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .._errors import InvalidRequestError

__all__ = ["Limits", "ServeConfig", "load_config"]


@dataclass
class Limits:
    """Bounds on what one request may ask for (see the module docstring)."""

    max_body_bytes: int = 4 * 2**20
    max_messages: int = 256
    max_tools: int = 64
    max_schema_bytes: int = 64 * 2**10
    max_schema_depth: int = 32
    max_queue: int = 256
    send_timeout_s: float = 30.0


@dataclass
class ServeConfig:
    """What ``--config FILE`` gives: the limits and the escalation (``None``: nothing leaves)."""

    limits: Limits = field(default_factory=Limits)
    escalation: Any = None
    source: str | None = None
    batch_size: int | None = None


_ESCALATION_KEYS = {"base_url", "model", "api_key_env", "min_confidence", "budget", "timeout", "audit_log",
                    "redact", "on_invalid", "audit_content", "max_retries", "strict"}


def _bad(path: Path, what: str, hint: str) -> InvalidRequestError:
    return InvalidRequestError(f"config file {path}: {what}", hint=hint)


def load_config(path: str | os.PathLike[str] | None) -> ServeConfig:
    """Read and check a config file (``.toml`` or JSON); every mistake is an error naming the key."""
    if path is None:
        return ServeConfig()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InvalidRequestError(f"config file {p} cannot be read: {exc.strerror or exc}",
                                  hint="pass the path of a JSON or TOML file to --config") from None
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(p, f"is not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'} ({exc})",
                   "fix the syntax; .toml files are read as TOML, others as JSON") from None
    if not isinstance(data, dict):
        raise _bad(p, "must hold an object/table at the top", 'e.g. {"limits": {...}, "escalation": {...}}')
    unknown = sorted(set(data) - {"limits", "escalation", "batching"})
    if unknown:
        raise _bad(p, f"unknown section(s) {unknown}", "the sections are 'limits', 'batching' and 'escalation'")
    cfg = ServeConfig(source=str(p))
    cfg.limits = _limits(p, data.get("limits") or {})
    cfg.batch_size = _batch_size(p, data.get("batching") or {})
    if data.get("escalation") is not None:
        cfg.escalation = _escalation(p, data["escalation"])
    return cfg


def _limits(p: Path, d: Any) -> Limits:
    if not isinstance(d, dict):
        raise _bad(p, "'limits' must be an object/table", "e.g. limits = {max_messages = 128}")
    names = {f.name: f for f in fields(Limits)}
    lim = Limits()
    for k, v in d.items():
        if k not in names:
            raise _bad(p, f"unknown limit {k!r}", f"the limits are {sorted(names)}")
        want_float = k == "send_timeout_s"
        ok = (isinstance(v, (int, float)) if want_float else isinstance(v, int)) and not isinstance(v, bool)
        if not ok or v <= 0:
            raise _bad(p, f"limits.{k} must be a positive {'number' if want_float else 'integer'}, not {v!r}",
                       f"e.g. {k} = {getattr(lim, k)}")
        setattr(lim, k, float(v) if want_float else int(v))
    return lim


def _batch_size(p: Path, d: Any) -> int | None:
    if not isinstance(d, dict):
        raise _bad(p, "'batching' must be an object/table", "e.g. batching = {batch_size = 8}")
    unknown = sorted(set(d) - {"batch_size"})
    if unknown:
        raise _bad(p, f"unknown batching key(s) {unknown}", "the only key is batch_size")
    v = d.get("batch_size")
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise _bad(p, f"batching.batch_size must be a positive integer, not {v!r}",
                   "e.g. batch_size = 8 (1: one at a time; leave it out to have it chosen)")
    return v


def _escalation(p: Path, d: Any) -> Any:
    """An :class:`edgeslm.Escalation` to an :class:`edgeslm.OpenAICompatible` target."""
    import re

    from .._errors import EdgeSLMError
    from ..escalation.policy import Escalation
    from ..escalation.targets import OpenAICompatible

    if not isinstance(d, dict):
        raise _bad(p, "'escalation' must be an object/table", "see `edgeslm serve --help`")
    unknown = sorted(set(d) - _ESCALATION_KEYS)
    if unknown:
        raise _bad(p, f"unknown escalation key(s) {unknown}", f"the keys are {sorted(_ESCALATION_KEYS)}")
    for k in ("base_url", "model"):
        if not isinstance(d.get(k), str) or not d[k]:
            raise _bad(p, f"escalation.{k} is required (a string)",
                       'e.g. base_url = "https://api.openai.com/v1", model = "gpt-4.1-mini"')
    key = None
    env = d.get("api_key_env")
    if env is not None:
        if not isinstance(env, str) or env not in os.environ:
            raise _bad(p, f"escalation.api_key_env: the variable {env!r} is not set",
                       f"export {env}=... before starting the server" if isinstance(env, str) else
                       'name an environment variable, e.g. api_key_env = "OPENAI_API_KEY"')
        key = os.environ[env]
    patterns = d.get("redact") or []
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not all(isinstance(x, str) for x in patterns):
        raise _bad(p, "escalation.redact must be a list of regular expressions", "e.g. redact = ['\\d{9}']")
    compiled = []
    for pat in patterns:
        try:
            compiled.append(re.compile(pat))
        except re.error as exc:
            raise _bad(p, f"escalation.redact pattern {pat!r} is not a valid regular expression ({exc})",
                       "fix or remove it") from None

    def redact(text: str) -> str:
        for rx in compiled:
            text = rx.sub("[REDACTED]", text)
        return text

    try:
        target = OpenAICompatible(d["base_url"], d["model"], api_key=key,
                                  max_retries=d.get("max_retries", 0), strict=d.get("strict"))
        return Escalation(target, min_confidence=d.get("min_confidence"), budget=d.get("budget"),
                          on_invalid=d.get("on_invalid", True), redact=redact if compiled else None,
                          audit_log=d.get("audit_log"), timeout=d.get("timeout", 10.0),
                          audit_content=bool(d.get("audit_content", False)))
    except EdgeSLMError as exc:
        raise _bad(p, f"escalation: {exc.message}", exc.hint or "fix the escalation section") from None
