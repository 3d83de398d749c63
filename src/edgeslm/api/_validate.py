"""Argument checks shared by ``chat``, ``generate``, ``extract``, ``run_tools`` and ``load``: one rule each.

* A value of the wrong **type** (``messages="hi"``, ``max_tokens=1.5``, ``seed="1"``,
  ``extract(None, ...)``) is a plain ``TypeError``.
* A value of the right type that cannot work (``max_tokens=0``, ``seed=-1``, an unknown role, an
  empty conversation, text holding a lone surrogate) is an :class:`InvalidRequestError` (also a
  ``ValueError``) whose hint says what to pass instead.
* ``max_tokens=None`` means *auto* everywhere: as many tokens as fit in the context window, at most
  :data:`AUTO_MAX_TOKENS`.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Sequence
from typing import Any

from .._errors import InvalidRequestError, ModelNotFoundError

__all__ = [
    "AUTO_MAX_TOKENS",
    "ROLES",
    "check_int",
    "check_max_tokens",
    "check_messages",
    "check_model_ref",
    "check_text",
    "max_tokens_or_auto",
]

#: Tokens generated at most when ``max_tokens=None`` (auto), the context window permitting.
AUTO_MAX_TOKENS = 2048
#: Message roles: ``ipython`` and ``function`` are other names of ``tool`` (tool results).
ROLES = ("system", "user", "assistant", "tool", "ipython", "function")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, *, minimum: int, allow_none: bool = False, hint: str | None = None) -> int | None:
    """*value* as an ``int`` (``None`` when allowed); ``TypeError`` for another type,
    :class:`InvalidRequestError` below *minimum*."""
    if value is None and allow_none:
        return None
    if not _is_int(value):
        kind = "an int or None" if allow_none else "an int"
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__} ({value!r:.40})")
    if value < minimum:
        raise InvalidRequestError(
            f"{name} must be >= {minimum}, not {value}", hint=hint or f"pass {name}={minimum} or more"
        )
    return int(value)


def check_max_tokens(value: Any) -> int | None:
    """``None`` (auto) or an int >= 1."""
    return check_int(
        value, "max_tokens", minimum=1, allow_none=True,
        hint=f"ask for at least one token, or pass max_tokens=None (auto: up to {AUTO_MAX_TOKENS}, "
        "as the context window allows)",
    )


def max_tokens_or_auto(value: Any) -> int:
    """The token budget for *value*: itself, or :data:`AUTO_MAX_TOKENS` for ``None`` (the loop also
    stops at the end of the context window)."""
    checked = check_max_tokens(value)
    return AUTO_MAX_TOKENS if checked is None else checked


def check_text(value: Any, name: str) -> str:
    """*value* as text: ``TypeError`` unless it is a ``str``; :class:`InvalidRequestError` when it
    cannot be encoded as UTF-8 (a lone surrogate such as ``"\\ud800"``)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"{name} is not valid Unicode text: it holds a lone surrogate ({value[exc.start]!r}) at index {exc.start}",
            hint="decode bytes with errors='replace', or clean the text with "
            "text.encode('utf-8', 'replace').decode('utf-8')",
        ) from None
    return value


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return check_text(value, where)
    if isinstance(value, (list, tuple)):  # OpenAI content parts: the text ones are kept
        parts = []
        for j, p in enumerate(value):
            if isinstance(p, dict) and "text" in p:
                parts.append(check_text(p["text"], f"{where}[{j}]['text']"))
            elif not isinstance(p, dict):
                raise TypeError(f"{where}[{j}] must be a content part dict such as {{'type': 'text', 'text': ...}}")
        return "".join(parts)
    raise TypeError(f"{where} must be a string (or a list of text parts), not {type(value).__name__}")


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, (list, tuple)):
        raise InvalidRequestError(
            f"{where} must be a list of tool calls, not {type(calls).__name__}",
            hint='use [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]',
        )
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        fn = call.get("function", call) if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(
                f"{at} must be a dict with a 'function': {{'name': ..., 'arguments': ...}}",
                hint='use {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}',
            )
        check_text(name, f"{at}['function']['name']")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            check_text(args, f"{at}['function']['arguments']")
            try:
                args = json.loads(args) if args.strip() else {}
            except (ValueError, RecursionError):
                raise InvalidRequestError(
                    f"{at}: the arguments of {name!r} are not JSON", hint="pass a dict or a JSON object string"
                ) from None
        if not isinstance(args, dict):
            raise InvalidRequestError(
                f"{at}: the arguments of {name!r} must be a JSON object, not {type(args).__name__}",
                hint='pass arguments like {"city": "Paris"} (or its JSON string)',
            )
        if isinstance(call, dict) and call.get("id") is not None:
            check_text(call["id"], f"{at}['id']")


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Validated copies of OpenAI-style *messages*: each a dict with a known ``role``; ``content`` a
    string (text parts joined, ``None`` as ""); ``name``, ``tool_call_id`` strings; ``tool_calls``
    (assistant only) a list of well-formed calls; other keys kept only when their value is a string.
    Every string is checked to be valid Unicode."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise InvalidRequestError(
            "messages is empty", hint="pass at least one message: [{'role': 'user', 'content': '...'}]"
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise TypeError(f"messages[{i}] must be a dict with a 'role'")
        role = m["role"]
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}] has the role {role!r:.60}, which is not one of {', '.join(ROLES)}",
                hint="use 'system', 'user', 'assistant' or 'tool' (tool results)",
            )
        content = m.get("content")
        if role in ("tool", "ipython", "function") and not isinstance(content, (str, list, tuple, type(None))):
            try:  # a tool result given as data
                content = json.dumps(content, ensure_ascii=False)
            except (TypeError, ValueError, RecursionError):
                raise TypeError(f"messages[{i}]['content'] must be a string or JSON data") from None
        clean: dict[str, Any] = {"role": role, "content": _content(content, f"messages[{i}]['content']")}
        for key, value in m.items():
            if key in ("role", "content"):
                continue
            if key == "tool_calls":
                if value:
                    if role != "assistant":
                        raise InvalidRequestError(
                            f"messages[{i}] has tool_calls but its role is {role!r}",
                            hint="only assistant messages carry tool_calls",
                        )
                    _check_tool_calls(value, f"messages[{i}]['tool_calls']")
                    clean[key] = value
            elif key in ("name", "tool_call_id"):
                if value is not None:
                    clean[key] = check_text(value, f"messages[{i}][{key!r}]")
            elif isinstance(value, str):
                clean[key] = check_text(value, f"messages[{i}][{key!r}]")
        out.append(clean)
    return out


def check_model_ref(ref: Any) -> None:
    """A model reference must be a path or an id that the file system can be asked about."""
    if not isinstance(ref, (str, os.PathLike)):
        raise TypeError(f"model must be a str or a path, not {type(ref).__name__}")
    text = os.fspath(ref)
    if not isinstance(text, str):
        raise TypeError("model must be a str path, not bytes")
    if not text.strip():
        raise InvalidRequestError("the model reference is empty", hint="pass a catalog id, a .gguf path or a folder")
    check_text(text, "model")
    try:
        os.stat(os.path.expanduser(text))
    except (FileNotFoundError, NotADirectoryError):
        pass  # not a local path: a catalog id or hf:// reference
    except ValueError as exc:  # an embedded NUL character
        raise InvalidRequestError(f"the model path is not valid: {exc}", hint="remove NUL characters") from None
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot use the model path {text[:80]!r}{'...' if len(text) > 80 else ''}: "
            f"{exc.strerror or exc}",
            hint="check the path (each part at most 255 bytes, the whole under the system's limit) and its "
            "permissions",
        ) from None


def check_escalation(escalation: Any) -> None:
    """``None`` or an :class:`edgeslm.Escalation`."""
    if escalation is None:
        return
    from ..escalation.policy import Escalation

    if not isinstance(escalation, Escalation):
        raise InvalidRequestError(f"escalation must be an edgeslm.Escalation, not {type(escalation).__name__}",
                                  hint="e.g. escalation=edgeslm.Escalation(edgeslm.OpenAICompatible(url, model), "
                                  "min_confidence=0.5)")
