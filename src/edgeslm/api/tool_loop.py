"""The ``run_tools`` loop: ask the model, execute the calls it makes (arguments validated, with a
timeout, results capped), feed the results back, until it answers or the rounds run out."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import ContextLengthError, EdgeSLMError, InvalidRequestError, ToolCallError
from ..tools.spec import Tool, as_tools
from .results import ChatResult, ToolCall

__all__ = ["ToolRun", "run_tools"]

Message = dict[str, Any]


@dataclass
class ToolRun:
    """The outcome of :meth:`Model.run_tools`."""

    result: ChatResult
    """The last reply: the answer, or the last tool calls when ``max_rounds`` was reached."""
    messages: list[Message]
    """The whole conversation: the input, then assistant calls, tool results and the answer."""
    rounds: int
    """How many times the model was asked."""
    stopped_reason: str
    """``"answer"`` (the model replied without calling a tool), ``"max_rounds"``, or
    ``"context_length"`` (the conversation, with the last tool results, no longer fits the context
    window; ``result`` is then the last reply, whose calls were executed)."""
    calls: list[ToolCall] = field(default_factory=list)
    """Every call executed, in order."""

    @property
    def text(self) -> str:
        return self.result.text


def _result_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


class _ToolTimeout(Exception):
    pass


def _invoke(tool: Tool, arguments: dict[str, Any], timeout: float | None) -> Any:
    """Run *tool*; with a *timeout*, in a daemon thread that is left behind when it runs too long
    (Python cannot stop a thread: a tool that must be interrupted should watch its own clock)."""
    if timeout is None:
        return tool.invoke(arguments)
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = tool.invoke(arguments)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"edgeslm-tool-{tool.name}", daemon=True).start()
    if not done.wait(timeout):
        raise _ToolTimeout
    if "error" in box:
        raise box["error"]
    return box["value"]


def _check_run_options(max_rounds: Any, tool_timeout: Any, max_result_chars: Any) -> None:
    from ._validate import check_int

    check_int(max_rounds, "max_rounds", minimum=1, hint="max_rounds=1 asks the model once and runs its calls")
    if tool_timeout is not None:
        if isinstance(tool_timeout, bool) or not isinstance(tool_timeout, (int, float)):
            raise TypeError(f"tool_timeout must be a number of seconds or None, not {type(tool_timeout).__name__}")
        if not tool_timeout > 0:
            raise InvalidRequestError(f"tool_timeout must be > 0 seconds, not {tool_timeout}",
                                      hint="pass tool_timeout=None to let tools run as long as they need")
    check_int(max_result_chars, "max_result_chars", minimum=1, allow_none=True,
              hint="pass max_result_chars=None for the default (twice the context window, in characters)")


def run_tools(
    model: Any, messages: Sequence[Message], tools: Any, *, max_rounds: int = 5, tool_choice: Any = "auto",
    tool_timeout: float | None = 30.0, max_result_chars: int | None = None, **chat_kwargs: Any,
) -> ToolRun:
    """Ask, execute the calls, feed the results back; repeat until an answer or ``max_rounds``.

    A tool that raises, runs longer than *tool_timeout* seconds, or returns more than
    *max_result_chars* characters (``None``: ``2 * model.n_ctx``) gives the model an error message
    instead of its result, and the run goes on."""
    _check_run_options(max_rounds, tool_timeout, max_result_chars)
    limit = max_result_chars if max_result_chars is not None else 2 * max(1, int(model.n_ctx))
    tool_list = as_tools(tools)
    if not tool_list:
        raise ToolCallError("run_tools needs at least one tool", hint="pass tools=[a_python_function, ...]")
    missing = [t.name for t in tool_list if t.fn is None]
    if missing:
        raise ToolCallError(
            f"cannot execute tool(s) {missing}: they have no Python function (OpenAI dicts only describe a tool)",
            hint="pass the Python functions (or @edgeslm.tool ones), or use chat(tools=...) and run the calls yourself",
        )
    by_name = {t.name: t for t in tool_list}
    transcript: list[Message] = [dict(m) for m in messages]
    executed: list[ToolCall] = []
    choice = tool_choice
    result: ChatResult | None = None
    for rnd in range(1, max_rounds + 1):
        try:
            reply = model.chat(transcript, tools=tool_list, tool_choice=choice, **chat_kwargs)
        except ContextLengthError:
            if result is None:
                raise  # the conversation given did not fit: nothing ran
            return ToolRun(result, transcript, rnd - 1, "context_length", executed)
        result = reply
        if result.error is not None:  # a call cut off by max_tokens: nothing to run, and no answer
            raise result.error
        if not result.tool_calls:
            transcript.append({"role": "assistant", "content": result.text})
            return ToolRun(result, transcript, rnd, "answer", executed)
        transcript.append({"role": "assistant", "content": result.text or None,
                           "tool_calls": [c.to_dict() for c in result.tool_calls]})
        for call in result.tool_calls:
            try:
                value = _invoke(by_name[call.name], call.arguments, tool_timeout)
                content = _result_text(value)
                if len(content) > limit:
                    content = (f"Error: the result of {call.name} is {len(content):,} characters long, more than "
                               f"the {limit:,} allowed; call it in a way that returns less")
            except _ToolTimeout:
                content = f"Error: {call.name} did not finish within {tool_timeout:g} s"
            except EdgeSLMError as exc:
                content = f"Error: {exc.message}"
            except Exception as exc:  # a failing tool becomes a message the model can react to
                content = f"Error: {type(exc).__name__}: {exc}"
            if len(content) > limit:  # an exception's own message can be long too
                content = content[: max(0, limit - 3)] + "..."
            content = content.encode("utf-8", "replace").decode("utf-8")  # lone surrogates in a result
            executed.append(call)
            transcript.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": content})
        choice = "auto"  # a forced first call must not force every later round
    assert result is not None
    return ToolRun(result, transcript, max_rounds, "max_rounds", executed)
