"""Result objects returned by :class:`edgeslm.Model`. All are plain dataclasses."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._errors import ToolCallError

__all__ = ["ChatChunk", "ChatResult", "ChatStream", "Extraction", "ToolCall", "Usage"]


@dataclass
class Usage:
    """Token counts and speed of one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_prompt_tokens: int = 0
    forced_tokens: int = 0
    time_to_first_token_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    total_time_s: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        """OpenAI ``usage`` keys plus edgeslm's timing fields."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.reused_prompt_tokens},
            "forced_tokens": self.forced_tokens,
            "time_to_first_token_s": round(self.time_to_first_token_s, 6),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 3),
            "total_time_s": round(self.total_time_s, 6),
        }


@dataclass
class ToolCall:
    """One call the model asked for; ``arguments`` already validated against the tool schema."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }


@dataclass
class ChatResult:
    """A complete answer from :meth:`Model.chat` or :meth:`Model.generate`."""

    text: str
    finish_reason: str
    usage: Usage
    model: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))
    error: ToolCallError | None = None
    """Set when the reply began a tool call it could not finish (``tool_choice="auto"``: cut off by
    ``max_tokens``, with ``finish_reason="length"``); ``text`` is then what came before the call."""
    escalated: bool = False  # the answer came from the escalation target (``model`` names it)
    escalation_trigger: str | None = None  # "invalid", "low_confidence" or "predicate"
    escalation_error: str | None = None  # why a triggered escalation did not answer (or, escalated: a log not written)
    confidence: float | None = None
    """For tool calls and JSON replies: the geometric mean of the probabilities of the tokens the
    model chose freely in them (``None`` for free text); escalation compares it with
    ``min_confidence``."""

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI ``chat.completion`` shape."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        elif message["content"] is None:
            message["content"] = ""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
            ],
            "usage": self.usage.to_dict(),
        }

    def __str__(self) -> str:
        return self.text


@dataclass
class ChatChunk:
    """One streamed piece: a text delta, complete tool calls, or the final chunk.

    The last chunk has ``finish_reason`` set and carries ``usage``.
    """

    delta: str
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    model: str = ""
    id: str = ""
    error: ToolCallError | None = None
    """On the last chunk: see :attr:`ChatResult.error`."""
    confidence: float | None = None
    """On the chunk with the tool calls: see :attr:`ChatResult.confidence`."""

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI ``chat.completion.chunk`` shape."""
        delta: dict[str, Any] = {}
        if self.delta:
            delta["content"] = self.delta
        if self.tool_calls:
            delta["tool_calls"] = [dict(c.to_dict(), index=i) for i, c in enumerate(self.tool_calls)]
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": self.finish_reason}],
        }
        if self.usage is not None:
            out["usage"] = self.usage.to_dict()
        return out


@dataclass
class Extraction:
    """Validated structured output from :meth:`Model.extract`.

    With escalation: ``escalated`` says ``data`` came from the target (``model`` names the model
    that answered), ``escalation_trigger`` what fired, ``escalation_error`` why a triggered
    hand-off did not answer (the local data stands). ``confidence`` stays the local model's.
    """

    data: Any
    confidence: float
    raw: str
    usage: Usage
    attempts: int = 1
    escalated: bool = False
    support: Any = None
    field_confidence: dict[str, float] = field(default_factory=dict)
    """JSON pointer -> how sure the model was of that value: the lowest probability among the
    tokens it chose to write it (1.0 when the grammar forced every one)."""
    escalation_trigger: str | None = None
    escalation_error: str | None = None
    model: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    """The raw candidate confidence scores (``mean_prob``, ``min_prob``, ``q10_prob``,
    ``mean_margin``, ``min_margin``, ``min_field``, ``joint_prob``, ``min_mean_prob``,
    ``grounded_prob``); ``edgeslm.calibrate`` picks and calibrates one."""

    def to_dict(self) -> dict[str, Any]:
        data = self.data.model_dump() if hasattr(self.data, "model_dump") else self.data
        return {
            "data": data,
            "confidence": self.confidence,
            "escalated": self.escalated,
            "escalation_trigger": self.escalation_trigger,
            "escalation_error": self.escalation_error,
            "field_confidence": self.field_confidence,
            "model": self.model,
            "attempts": self.attempts,
            "usage": self.usage.to_dict(),
        }


class ChatStream(Iterator[ChatChunk]):
    """Iterator of :class:`ChatChunk` returned by ``chat(..., stream=True)``.

    The stream holds the model (other calls wait) until it is exhausted or closed. Closing it, or
    leaving a ``for`` loop over it (``break``, ``return``, an exception), stops generation at once
    and releases the model, even while a variable still refers to the stream: ``iter(stream)``
    returns a loop iterator of its own, and when that iterator is dropped the stream is closed.
    (Streams advanced only with ``next(stream)`` are released by ``close()``, ``with``, or when
    the stream itself is garbage-collected.)
    """

    def __init__(self, gen: Iterator[ChatChunk]) -> None:
        self._gen = gen

    def __iter__(self) -> Iterator[ChatChunk]:
        return _StreamLoop(self)

    def __next__(self) -> ChatChunk:
        return next(self._gen)

    def close(self) -> None:
        """Stop generating and release the model."""
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StreamLoop(Iterator[ChatChunk]):
    """The iterator a ``for`` loop over a :class:`ChatStream` uses: the loop drops it when it ends
    (``break`` included), and dropping it closes the stream."""

    __slots__ = ("_stream",)

    def __init__(self, stream: ChatStream) -> None:
        self._stream = stream

    def __iter__(self) -> _StreamLoop:
        return self

    def __next__(self) -> ChatChunk:
        return next(self._stream)

    def __del__(self) -> None:
        try:
            self._stream.close()
        except Exception:
            pass
