"""Tool calling for :class:`edgeslm.Model`: constrained calls in the model's own format (the loop
that executes them is :mod:`edgeslm.api.tool_loop`).

How one ``chat(..., tools=...)`` runs:

1. The conversation is rendered in the model's native tool format (:mod:`edgeslm.tools.formats`).
2. ``required`` (or one named function): the reply is decoded under an llguidance grammar of calls
   in the format's own syntax from its first token. ``auto``: the reply is free text, with no mask,
   until it commits to a call in any form small models use (:mod:`edgeslm.tools.calls`: the
   family's tag, a bare or fenced JSON call, a JSON list, a Python-style call); from there the call
   grammar constrains the rest. Inside a call the name is one of the tools and the arguments follow
   that tool's JSON Schema, so a call is well-formed by construction. The text before it is the
   reply's content.
3. Every call's arguments are validated against the tool's *original* schema (the grammar may only
   approximate a relaxed schema). A call that does not validate is generated again with sampling
   from where the calls began; when no attempt succeeds, :class:`ToolCallError` is raised. In
   ``auto``, a call cut off by ``max_tokens`` ends the reply with ``finish_reason="length"`` and
   ``result.error`` (with ``required``, it is retried, then raised). A call is never returned as
   text, nor dropped silently.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .._errors import SchemaError, ToolCallError
from ..backends.base import Backend
from ..decoding.loop import GenStats, generate_steps, partial_stop_len
from ..decoding.sampling import Sampler, SamplingParams
from ..tools.calls import CLOSE_TAGS, TAGS, CallDetector, call_grammar
from ..tools.formats import ToolFormat, get_format
from ..tools.spec import Tool, as_tools
from .generation import Generation, StreamHandle, default_retries, new_id, usage_of
from .results import ChatChunk, ChatResult, ToolCall

__all__ = ["ToolPlan", "collect", "plan_tools", "tag_token", "tool_reply"]

Message = dict[str, Any]
_SEPARATORS = {"item_separator": ", ", "key_separator": ": "}


@dataclass
class _ToolSchema:
    grammar_schema: dict[str, Any]
    validator: Any
    exact: bool


@functools.lru_cache(maxsize=1024)
def _tool_schema(key: str) -> _ToolSchema:
    from ..decoding.support import GRAMMAR_OPTIONS
    from .extract import prepare_schema

    plan = prepare_schema(json.loads(key))
    g = {**plan.grammar_schema, "x-guidance": {**GRAMMAR_OPTIONS, **_SEPARATORS}}
    return _ToolSchema(g, plan.validator, plan.support.exact)


def _schema_for(t: Tool) -> _ToolSchema:
    params = t.parameters
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise ToolCallError(
            f"tool {t.name!r}: parameters must be a JSON Schema of type 'object'",
            hint='e.g. {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}',
        )
    try:
        return _tool_schema(json.dumps(params, sort_keys=False))
    except SchemaError as exc:
        raise ToolCallError(
            f"the parameters of tool {t.name!r} cannot be enforced: {exc.message}",
            hint="simplify that tool's parameter schema (edgeslm.check_schema(schema) explains)",
        ) from None


@dataclass
class ToolPlan:
    """Tools, the choice mode and the format for one reply."""

    fmt: ToolFormat
    tools: list[Tool]
    allowed: list[Tool]
    mode: str  # "auto" | "required" | "none"
    parallel: bool
    schemas: dict[str, _ToolSchema] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return all(self.schemas[t.name].exact for t in self.allowed)

    def _tool_schemas(self) -> list[tuple[str, dict[str, Any]]]:
        return [(t.name, self.schemas[t.name].grammar_schema) for t in self.allowed]

    def grammar(self, engine: Backend) -> str:
        """Grammar of a reply made of calls in the format's own syntax (``required``, retries)."""
        return self.fmt.grammar(self._tool_schemas(), parallel=self.parallel,
                                special_ids=_special_ids(engine, self.fmt.specials))

    @functools.cached_property
    def detector(self) -> CallDetector:
        """What commits an ``auto`` reply to a call."""
        return self.fmt.detector([t.name for t in self.allowed])

    def call_grammar(self, engine: Backend, pre: str = "") -> str:
        """Grammar of an ``auto`` reply from where its calls begin (after *pre*, see
        :func:`~edgeslm.tools.calls.call_grammar`)."""
        return call_grammar(self._tool_schemas(), name_keys=self.fmt.name_keys, parallel=self.parallel,
                            special_ids=_special_ids(engine, (*self.fmt.specials, *TAGS, *CLOSE_TAGS)), pre=pre)


def _special_ids(engine: Backend, texts: Sequence[str]) -> dict[str, int]:
    """The texts among *texts* that are one special token of the engine's vocabulary, with its id.

    A grammar matches such a token only as ``<[id]>``, never by its spelling: control tokens
    (Phi-4-mini's ``<|tool_call|>``, Llama 3's ``<|python_tag|>``) and *user-defined* ones alike
    (Qwen 2.5's ``<tool_call>``, which llama.cpp produces from plain text too, so what the grammar
    forces as text comes back as that one token)."""
    from ..decoding.constrain import constraints

    out: dict[str, int] = {}
    for s in dict.fromkeys(texts):
        tok = tag_token(engine, s)
        if tok is not None and constraints(engine).tokenizer.is_special_token(tok):
            out[s] = tok
    return out


def tag_token(engine: Backend, text: str) -> int | None:
    """The id of *text* when the vocabulary has it as one control or user-defined token, else ``None``."""
    toks = engine.tokenize(text, special=True)
    if len(toks) != 1:
        return None
    if toks != engine.tokenize(text, special=False):  # parsed only as a control token
        return toks[0]
    return toks[0] if engine.token_text(toks[0]) == text and len(text) > 1 else None


def plan_tools(tools: Any, tool_choice: Any, parallel: bool, fmt: str | ToolFormat) -> ToolPlan:
    """Check the tools and the choice; compile their argument schemas (cached)."""
    tool_list = as_tools(tools)
    f = get_format(fmt)
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, str) and choice in ("auto", "required", "none"):
        if not tool_list and choice != "none":
            raise ToolCallError(f"tool_choice={choice!r} needs tools", hint="pass tools=[...]")
        plan = ToolPlan(f, tool_list, list(tool_list), choice, parallel)
    else:
        name = _choice_name(choice)
        match = [t for t in tool_list if t.name == name]
        if not match:
            raise ToolCallError(
                f"tool_choice names {name!r}, which is not among the tools",
                hint=f"choose one of {[t.name for t in tool_list]}",
            )
        plan = ToolPlan(f, tool_list, match, "required", False)
    if plan.mode != "none":
        plan.schemas = {t.name: _schema_for(t) for t in plan.allowed}
    return plan


def _choice_name(choice: Any) -> str:
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        if isinstance(name, str) and name:
            return name
    raise ToolCallError(
        f"unknown tool_choice {choice!r}",
        hint='use "auto", "required", "none" or {"type": "function", "function": {"name": "..."}}',
    )


# ------------------------------------------------------------------------------------------- generation


@dataclass
class _Outcome:
    text: str
    call_at: int  # -1: a text answer
    complete: bool
    stats: GenStats
    stop_hit: bool = False
    error: str | None = None  # why a call that began could not go on under its grammar
    first: bool = True  # the first attempt (retries continue its calls)
    call_logprobs: list[float] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        """Geometric mean of the probabilities of the tokens the model chose inside its calls."""
        lps = self.call_logprobs
        return math.exp(sum(lps) / len(lps)) if lps else 1.0


class _Attempt:
    """One generation: iterating it yields the text deltas of the part before any call; then
    :attr:`outcome` holds the result (:meth:`run` does both for an attempt nobody watches)."""

    def __init__(self, engine: Backend, prompt: list[int], plan: ToolPlan, params: SamplingParams, budget: int,
                 stops: Sequence[str], *, required: bool) -> None:
        self._steps = _generate(engine, prompt, plan, params, budget, stops, required=required)
        self.outcome: _Outcome | None = None

    def __iter__(self) -> Iterator[str]:
        self.outcome = yield from self._steps

    def run(self) -> _Outcome:
        for _ in self:
            pass
        assert self.outcome is not None
        return self.outcome


def _generate(
    engine: Backend, prompt: list[int], plan: ToolPlan, params: SamplingParams, budget: int,
    stops: Sequence[str], *, required: bool,
) -> Generator[str, None, _Outcome]:
    """One generation; yields the text deltas of the part before any call, returns the outcome."""
    from ..tools.constraint import ToolReply

    soft = max(24, int(budget * 0.6))  # call tokens after which a call is steered to close
    if required:
        constraint = ToolReply(engine, required=plan.grammar(engine), soft_limit=soft)
    else:
        constraint = ToolReply(engine, detector=plan.detector, soft_limit=soft,
                               grammar=functools.partial(plan.call_grammar, engine))
    stats = GenStats()
    steps = generate_steps(engine, prompt, Sampler(params), budget, constraint=constraint, logprobs=True,
                           stats=stats)
    emitted = 0
    call_at: int | None = None
    stop_hit = False
    text = ""
    call_lps: list[float] = []  # the model's free choices inside the calls
    try:
        for step in steps:
            text = constraint.text
            steered = constraint.wrap is not None and constraint.wrap.on
            if constraint.call_at is not None and step.logprob is not None and not step.forced and not steered:
                call_lps.append(step.logprob)
            if call_at is not None:
                continue
            if constraint.call_at is not None:  # the reply has just committed to a call
                head = text[: constraint.call_at]
                cut = _first_stop(head, stops, emitted)
                if cut >= 0:  # a stop string came before the call: the answer ends there
                    text, stop_hit = head[:cut], True
                    if cut > emitted:
                        yield head[emitted:cut]
                    break
                call_at = constraint.call_at
                if len(head) > emitted:
                    yield head[emitted:]
                emitted = len(head)
                continue
            cut = _first_stop(text, stops, emitted)
            if cut >= 0:
                if cut > emitted:
                    yield text[emitted:cut]
                text, stop_hit = text[:cut], True
                break
            safe = min(constraint.hold, len(text) - partial_stop_len(text, stops))
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        else:
            constraint.finish()
            text = constraint.text
    finally:
        steps.close()
    if call_at is None and not stop_hit and len(text) > emitted:
        yield text[emitted:]
    return _Outcome(text, -1 if call_at is None else call_at, constraint.complete if call_at is not None else True,
                    stats, stop_hit, constraint.error, call_logprobs=call_lps)


def _first_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index of the first stop string in *text* (searching a little before *start*), or -1."""
    best = -1
    for s in stops:
        i = text.find(s, max(0, start - len(s)))
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def _check_calls(plan: ToolPlan, out: _Outcome) -> tuple[list[ToolCall], list[str]]:
    if out.error is not None:
        return [], [out.error]
    if not out.complete:
        return [], [f"the call was cut off at {out.stats.completion_tokens} tokens (max_tokens)"]
    try:
        raw = plan.fmt.read(out.text, out.call_at)
    except ToolCallError as exc:
        return [], [exc.message]
    calls: list[ToolCall] = []
    errors: list[str] = []
    allowed = {t.name for t in plan.allowed}
    for name, args in raw:
        if name not in allowed:
            errors.append(f"unknown tool {name!r}")
            continue
        for e in plan.schemas[name].validator.iter_errors(args):
            path = "/".join(str(p) for p in e.absolute_path) or "<arguments>"
            errors.append(f"{name}: {path}: {e.message}")
        calls.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", name, args))
    return calls, errors


def _check_text(plan: ToolPlan, text: str) -> None:
    """A text answer holds no call (the reply would have committed to it): never drop one silently."""
    at = plan.detector.search(text)
    if at is not None:
        raise ToolCallError(
            f"the {plan.fmt.name} reply holds a tool call inside its text: {text[at:at + 200]!r}",
            hint="use tool_choice='required' to force a proper call, or another tool_format=",
        )


def tool_reply(
    service: Generation, prompt_fn: Callable[[Backend], list[int]], plan: ToolPlan, params: SamplingParams,
    max_tokens: int, stops: list[str], stream: StreamHandle | None = None, retries: int | None = None,
) -> Iterator[ChatChunk]:
    """Stream one reply that may call tools: text deltas, then one chunk with the calls, then the last
    chunk. The first attempt is streamed as it is made; calls that do not validate are generated
    again from where they began (not shown), through the service's one retry loop
    (:meth:`~edgeslm.api.generation.Generation.constrained`)."""
    name = service.name
    cid = new_id()
    with service.holding(stream) as engine:
        prompt = prompt_fn(engine)
        required = plan.mode == "required"
        first = _Attempt(engine, prompt, plan, params, max_tokens, stops, required=required)
        for delta in first:
            if delta:
                yield ChatChunk(delta, model=name, id=cid)
        shown = first.outcome
        assert shown is not None
        prefix = shown.text[: shown.call_at] if shown.call_at >= 0 else ""

        def retry(i: int, p: SamplingParams) -> _Outcome:
            retry_prompt = prompt + engine.tokenize(prefix, special=False) if prefix else prompt
            out = _Attempt(engine, retry_prompt, plan, p, max_tokens, [], required=True).run()
            out.text, out.call_at, out.first = prefix + out.text, len(prefix), False
            return out

        def check(out: _Outcome) -> tuple[_Reply, list[str]]:
            if out.call_at < 0:  # a text answer (only the first attempt can be one)
                _check_text(plan, out.text)
                return _Reply("text"), []
            if not required and out.error is None and not out.complete and out.stats.hit_limit and out.first:
                return _Reply("cut_off"), []  # auto: the reply committed to a call that max_tokens cut off
            calls, errors = _check_calls(plan, out)
            return _Reply("calls", calls), errors

        n = default_retries(plan.exact) if retries is None else retries
        run = service.constrained(retry, check, params, n, first=shown)
        out = run.last
        if run.errors:
            raise ToolCallError(
                f"no valid tool call after {run.count} attempt(s): {'; '.join(run.errors[:3])}",
                hint="raise max_tokens=, simplify the tool's parameter schema, or use a larger model; "
                "tool_choice='auto' lets the model answer in text instead",
            )
        if run.value.kind == "text":
            finish = "length" if out.stats.hit_limit and not out.stop_hit else "stop"
            yield ChatChunk("", finish, usage_of(out.stats), model=name, id=cid)
            return
        if run.value.kind == "cut_off":  # the text before the call stays
            error = ToolCallError(
                f"the tool call was cut off at {out.stats.completion_tokens} tokens (max_tokens): "
                f"{out.text[out.call_at:out.call_at + 200]!r}",
                hint="raise max_tokens= so the call fits",
            )
            yield ChatChunk("", "length", usage_of(out.stats), model=name, id=cid, error=error)
            return
        yield ChatChunk("", tool_calls=run.value.calls, model=name, id=cid, confidence=out.confidence)
        yield ChatChunk("", "tool_calls", run.usage, model=name, id=cid)


@dataclass
class _Reply:
    """What a checked attempt is: a text answer, an ``auto`` call cut off by ``max_tokens``, or calls."""

    kind: Literal["text", "cut_off", "calls"]
    calls: list[ToolCall] = field(default_factory=list)


def collect(chunks: Iterator[ChatChunk], model_name: str) -> ChatResult:
    """A :class:`ChatResult` from a stream of chunks."""
    text: list[str] = []
    calls: list[ToolCall] = []
    last: ChatChunk | None = None
    confidence: float | None = None
    for c in chunks:
        text.append(c.delta)
        calls.extend(c.tool_calls)
        confidence = c.confidence if c.confidence is not None else confidence
        last = c
    assert last is not None and last.usage is not None and last.finish_reason is not None
    joined = "".join(text)
    return ChatResult(text=joined.strip() if calls or last.error else joined, finish_reason=last.finish_reason,
                      usage=last.usage, model=model_name, tool_calls=calls, id=last.id, error=last.error,
                      confidence=confidence)
