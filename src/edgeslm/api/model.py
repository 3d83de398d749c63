"""``Model``: one loaded model with chat, generate, extract and tool calls.

A ``Model`` wraps a backend (the engine) and the shared decoding loop. Calls are serialized with
a lock, so one model can be shared by many threads; a stream holds the lock until it is exhausted,
closed, or garbage-collected, or until the ``for`` loop (or any other iteration) over it is left:
iterating a :class:`ChatStream` goes through a loop iterator of its own, and dropping that iterator
(as ``break`` does) closes the stream, even while the stream object is still referenced.

Over ~450 lines on purpose: it is the public facade, and every method's docstring is part of the API
reference; the work is done in the modules it calls.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import EdgeSLMError, InvalidRequestError, SchemaError, TemplateError, ToolCallError
from ..backends.base import Backend
from ..decoding.sampling import SamplingParams
from ..decoding.template import ChatTemplate
from ._validate import (
    AUTO_MAX_TOKENS,
    check_escalation,
    check_int,
    check_max_tokens,
    check_messages,
    check_text,
    max_tokens_or_auto,
)
from .generation import Generation, SequenceGeneration
from .results import ChatChunk, ChatResult, ChatStream, Extraction

if TYPE_CHECKING:
    from ..decoding.scheduler import SequenceView
    from .extract import Attempt
    from .generation import Attempts

__all__ = ["ChatStream", "Message", "Model"]

Message = dict[str, Any]


class Model:
    """A loaded model. Create it with :func:`edgeslm.load`; close it (or use ``with``) to free memory."""

    supports_schema = True
    supports_tools = True

    def __init__(
        self, engine: Backend, *, name: str, template: ChatTemplate | None, info: Any = None,
        tool_format: str | None = None, escalation: Any = None,
    ) -> None:
        self._gen = Generation(engine, name)
        self.escalation = escalation
        """The default :class:`edgeslm.Escalation` of this model's calls (``None``: nothing leaves
        the device); a call's own ``escalation=`` overrides it, ``escalation=False`` turns it off."""
        self.name = name
        self.path = engine.path
        self.backend = engine.name
        self.device = engine.device
        self.n_ctx = engine.n_ctx
        self.info = info
        self.plan = engine.plan
        """How the model was planned and opened (:class:`edgeslm.Plan`, with the engine self-check)."""
        self.template = template
        self.tool_format: str = tool_format or _default_tool_format(engine, template, info)
        """How this model is shown tools and writes calls: "generic", "hermes", "phi4", "llama3" or
        "gemma3" (from the catalog, else detected from the template; assign to override)."""
        self.adapters: tuple[str, ...] = tuple(engine.adapter_names())
        """The LoRA adapters loaded beside the base weights (``load(..., adapters={...})``): pass one
        as ``adapter=`` to a call, or use :meth:`with_adapter`."""

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Free the model's memory (the engine, and the grammars and tokenizer kept for it). Safe
        to call twice; later calls raise ``ModelClosedError``. An unfinished stream of the calling
        thread is closed first."""
        self._gen.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._gen.collect()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        return self._gen.closed

    @property
    def adapter(self) -> str | None:
        """The adapter this model's calls use by default (``None``: the base weights)."""
        return self._gen.adapter

    def with_adapter(self, adapter: str | None) -> Model:
        """This model with *adapter* on by default (``None``: the base): the same engine, memory and
        lock, no reload. Calls switch adapters per call; a switch starts the KV cache over."""
        if adapter is not None and adapter not in self.adapters:
            from .._errors import AdapterError

            raise AdapterError(f"model {self.name!r} has no adapter {adapter!r}",
                               hint=f"choose one of {list(self.adapters)} (load(..., adapters={{...}}) adds them), "
                               "or None for the base model")
        if adapter == self.adapter:
            return self
        import copy

        view = copy.copy(self)
        view._gen = self._gen.view(adapter)
        # the model that owns the engine lives as long as any view of it: its collection frees the engine
        view._owner = getattr(self, "_owner", self)
        return view

    def _using(self, adapter: str | None) -> Model:
        return self if adapter is None else self.with_adapter(adapter)

    def _on_sequence(self, view: SequenceView) -> Model:
        """This model bound to one sequence of a batch (:mod:`edgeslm.decoding.scheduler`): its
        calls run the same paths, on the sequence, while the batch holds the model itself."""
        import copy

        worker = copy.copy(self)
        worker._gen = SequenceGeneration(view, self.name)
        worker._owner = getattr(self, "_owner", self)
        return worker

    @property
    def _engine(self) -> Backend | None:
        """The backend (for tests and benchmarks; calls on it are not serialized)."""
        return self._gen._engine

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.backend}/{self.device}"
        return f"<edgeslm.Model {self.name!r} {state}>"

    # ------------------------------------------------------------------ prompts
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens for *text* (control tokens parsed only when ``special=True``)."""
        check_text(text, "text")
        with self._gen.holding(keep=True) as engine:
            return engine.tokenize(text, special=special)

    def _chat_segments(self, engine: Backend, messages: Sequence[Message], **kw: Any) -> list[tuple[str, bool]]:
        msgs = check_messages(messages)
        from .generation import check_fits

        check_fits(_message_chars(msgs), engine.n_ctx)  # before the template copies a text too long to fit
        if self.template is None:
            raise TemplateError(
                f"model {self.name!r} has no chat template",
                hint="use model.generate(prompt) for base models, or pass chat_template=... to load()",
            )
        if _has_tool_messages(msgs):
            return self._tool_segments(engine, msgs, [])
        return self.template.render(msgs, control_tokens=lambda s: self._gen.control_ids(engine, s), **kw)

    def _tool_segments(
        self, engine: Backend, messages: Sequence[Message], tools: Sequence[Any]
    ) -> list[tuple[str, bool]]:
        """Segments for a conversation with tools, tool calls or tool results, in the native format."""
        from ..tools.formats import Markup, get_format
        from .generation import check_fits

        check_fits(_message_chars(messages), engine.n_ctx)

        if self.template is None:
            raise TemplateError(
                f"model {self.name!r} has no chat template, so it cannot be given tools",
                hint="pass chat_template=... to load()",
            )
        msgs = check_messages(messages)
        mark = Markup()
        plain = _normalize_messages(get_format(self.tool_format).prepare(msgs, tools, mark))
        # markup the format wrote (marked) is the template's own; everything else must stay plain
        segments = self.template.render(plain, control_tokens=lambda s: self._gen.control_ids(engine, mark.unmarked(s)))
        return mark.split(segments)

    def chat_prompt(
        self, messages: Sequence[Message], *, tools: Sequence[Any] | None = None, **template_kwargs: Any
    ) -> list[int]:
        """The prompt tokens :meth:`chat` would evaluate for *messages* (shown *tools*, if any)."""
        with self._gen.holding(keep=True) as engine:
            if tools:
                from ..tools.spec import as_tools

                return self._gen.prompt_tokens(engine, self._tool_segments(engine, messages, as_tools(tools)))
            return self._gen.prompt_tokens(engine, self._chat_segments(engine, messages, **template_kwargs))

    # ------------------------------------------------------------------ generation
    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = 512,
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int = 40,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
        response_format: dict[str, Any] | None = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool = True,
        escalation: Any = None,
        adapter: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Answer a conversation (OpenAI message dicts).

        Returns a :class:`ChatResult`, or with ``stream=True`` a :class:`ChatStream` of
        :class:`ChatChunk` (leaving the loop over it ends it). ``max_tokens=None`` is auto (up to
        2048 tokens, as the context window allows). ``temperature=0`` is greedy; with a fixed
        ``seed`` sampling is reproducible too.
        ``response_format={"type": "json_schema", "json_schema": {"schema": {...}}}`` (or
        ``{"type": "json_object"}``) constrains the reply like :meth:`extract`: the text is JSON
        that validates, or :class:`ExtractionFailed` is raised.

        ``tools`` (Python functions, ``@edgeslm.tool`` functions or OpenAI tool dicts) lets the model
        call them in its native format (:attr:`tool_format`); ``tool_choice`` is ``"auto"`` (text or
        calls: a call is caught in whatever form the model starts it, then constrained), ``"required"``,
        ``"none"`` or ``{"type": "function", "function": {"name": ...}}``. Calls come back in
        ``result.tool_calls`` (``finish_reason="tool_calls"``; the text before them in ``result.text``),
        their arguments validated against the tool's schema; a call that cannot be produced raises
        :class:`ToolCallError`, except in ``auto`` a call cut off by ``max_tokens``, which ends the
        result with ``finish_reason="length"`` and ``result.error``. Streams yield text deltas and then
        one chunk with the complete calls.

        ``escalation`` (default: the model's; ``False``: off): a reply with no valid local answer (a
        JSON reply or tool call that could not be produced), or one the app's predicate rejects, is
        handed to a bigger model (``result.escalated``). Streams are never escalated: their text is
        shown as it is made.

        ``adapter`` names one of :attr:`adapters` for this call (``None``: the model's default, the
        base weights unless this is a :meth:`with_adapter` view).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        if adapter is not None:
            m = self.with_adapter(adapter)
            return m.chat(messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          seed=seed, stop=stop, stream=stream, response_format=response_format, tools=tools,
                          tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls, escalation=escalation)
        esc = None if stream else self._escalation(escalation)
        local = functools.partial(
            self._chat_local, messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            seed=seed, stop=stop, stream=stream, response_format=response_format, tools=tools,
            tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
        if esc is None:
            return local()
        from .escalate import chat_request, chat_with_escalation

        schema = _response_schema(response_format)
        request = chat_request(messages, tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
                               schema=schema, max_tokens=max_tokens)
        return chat_with_escalation(esc, local, request)

    def _chat_local(
        self, messages: Sequence[Message], max_tokens: int | None, temperature: float, top_p: float, top_k: int,
        seed: int | None, stop: str | Sequence[str] | None, stream: bool, response_format: dict[str, Any] | None,
        tools: Sequence[Any] | None, tool_choice: Any, parallel_tool_calls: bool,
    ) -> Any:
        check_max_tokens(max_tokens)
        if tools or tool_choice not in (None, "none"):
            if response_format is not None and _response_schema(response_format) is not None:
                raise ToolCallError("tools and a JSON response_format cannot be combined",
                                    hint="use one: tools=... or response_format=...")
            return self._chat_tools(messages, tools, tool_choice, parallel_tool_calls, max_tokens,
                                    SamplingParams(temperature, top_p, top_k, seed), stop, stream)
        schema = _response_schema(response_format)
        params = SamplingParams(temperature, top_p, top_k, seed)
        if schema is not None:
            if _stops(stop):
                raise InvalidRequestError(
                    "stop strings cannot be combined with a JSON response_format",
                    hint="the grammar ends the JSON itself; drop stop=",
                )
            return self._chat_json(messages, schema, max_tokens, params, stream)
        stops = _stops(stop) + (self.template.stop if self.template else [])

        def prompt(engine: Backend) -> list[int]:
            return self._gen.prompt_tokens(engine, self._chat_segments(engine, messages))

        return self._run(prompt, params, max_tokens, stops, stream)

    def _chat_tools(
        self, messages: Sequence[Message], tools: Any, tool_choice: Any, parallel: bool, max_tokens: int | None,
        params: SamplingParams, stop: str | Sequence[str] | None, stream: bool,
    ) -> Any:
        from .tool_use import collect, plan_tools, tool_reply

        max_tokens = max_tokens_or_auto(max_tokens)
        plan = plan_tools(tools, tool_choice, parallel, self.tool_format)
        stops = _stops(stop) + (self.template.stop if self.template else [])
        if plan.mode == "none":  # answer in text: the tools are not offered

            def prompt(engine: Backend) -> list[int]:
                return self._gen.prompt_tokens(engine, self._tool_segments(engine, messages, []))

            return self._run(prompt, params, max_tokens, stops, stream)

        def tool_prompt(engine: Backend) -> list[int]:
            return self._gen.prompt_tokens(engine, self._tool_segments(engine, messages, plan.tools))

        if not stream:
            return collect(tool_reply(self._gen, tool_prompt, plan, params, max_tokens, stops), self.name)
        return self._gen.stream(lambda h: tool_reply(self._gen, tool_prompt, plan, params, max_tokens, stops, h))

    def run_tools(
        self,
        messages: Sequence[Message],
        tools: Sequence[Any],
        *,
        max_rounds: int = 5,
        tool_choice: Any = "auto",
        tool_timeout: float | None = 30.0,
        max_result_chars: int | None = None,
        adapter: str | None = None,
        **chat_kwargs: Any,
    ) -> Any:
        """Let the model call Python *tools* until it answers: each round the calls are executed
        (arguments validated; enums, dataclasses and pydantic models built) and their results fed back
        as ``role: "tool"`` messages. A tool that raises, runs longer than ``tool_timeout`` seconds
        (``None``: no limit) or returns more than ``max_result_chars`` characters (``None``: twice
        the context window in tokens, as characters) becomes an error message for the model, and the
        run goes on. With a timeout, each call runs in a worker thread (left to finish in the
        background when it is late); ``tool_timeout=None`` runs tools in the calling thread.

        Returns a :class:`ToolRun` (``result``, ``messages``, ``rounds``, ``stopped_reason`` =
        ``"answer"``, ``"max_rounds"``, or ``"context_length"`` when the conversation no longer fits
        the context window). Other keyword arguments go to :meth:`chat`.
        """
        from .tool_loop import run_tools

        if chat_kwargs.get("stream"):
            raise InvalidRequestError("run_tools does not stream",
                                      hint="use chat(..., tools=..., stream=True) for each round")
        return run_tools(self._using(adapter), messages, tools, max_rounds=max_rounds, tool_choice=tool_choice,
                         tool_timeout=tool_timeout, max_result_chars=max_result_chars, **chat_kwargs)

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int | None = 256,
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int = 40,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
        adapter: str | None = None,
    ) -> Any:
        """Continue raw text (no chat template; control tokens in *prompt* stay plain text).
        ``max_tokens=None`` is auto (up to 2048 tokens, as the context window allows)."""
        check_text(prompt, "prompt")
        params = SamplingParams(temperature, top_p, top_k, seed)

        def tokens(engine: Backend) -> list[int]:
            return self._gen.prompt_tokens(engine, [(prompt, False)])

        return self._using(adapter)._run(tokens, params, max_tokens, _stops(stop), stream)

    # ------------------------------------------------------------------ structured output
    def extract(
        self,
        text: str,
        schema: Any,
        *,
        instructions: str | None = None,
        examples: Sequence[Any] | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        retries: int | None = None,
        escalation: Any = None,
        adapter: str | None = None,
    ) -> Extraction:
        """Extract data from *text* as *schema* (a JSON Schema dict or a pydantic model class).

        Returns an :class:`Extraction` whose ``data`` always validates (a pydantic instance when a
        class was given). ``examples`` are ``(input, output)`` pairs or ``{"input", "output"}``
        dicts. ``max_tokens=None`` (the default) is auto: up to 2048 tokens, as the context window
        allows. Raises :class:`SchemaError` for a schema that cannot be served and
        :class:`ExtractionFailed` when no attempt validated.

        ``escalation`` (default: the model's, see :func:`edgeslm.load`; ``False``: off) hands the
        request to a bigger model when the local answer is invalid, unsure or the app's predicate
        says so; the result then says ``escalated=True`` and which model answered.

        ``adapter``: one of :attr:`adapters` for this call (``None``: the model's default).
        """
        return self._using(adapter)._extract(
            text, schema, instructions=instructions, examples=examples, max_tokens=max_tokens,
            temperature=temperature, seed=seed, retries=retries, escalation=escalation)

    def _extract(
        self, text: str, schema: Any, *, instructions: str | None = None, examples: Sequence[Any] | None = None,
        max_tokens: int | None = None, temperature: float = 0.0, seed: int | None = None,
        retries: int | None = None, escalation: Any = None,
    ) -> Extraction:
        """:meth:`extract` on this model; *schema* may be an ``ExtractionPlan`` already prepared
        (``extract_many`` prepares it once per call)."""
        from .extract import ExtractionPlan, prepare_schema

        local = functools.partial(self._extract_local, text, schema, instructions, examples, max_tokens, temperature,
                                  seed, retries)
        esc = self._escalation(escalation)
        if esc is None:
            return local()
        from .escalate import extract_with_escalation, extraction_request

        plan = schema if isinstance(schema, ExtractionPlan) else prepare_schema(schema)
        request = extraction_request(text, plan.schema, instructions=instructions, examples=examples,
                                     max_tokens=max_tokens)
        return extract_with_escalation(esc, local, request, model_class=plan.model_class)

    def extract_many(
        self, texts: Iterable[str], schema: Any, *, batch_size: int | None = None, progress: bool = False,
        **extract_kwargs: Any,
    ) -> list[Extraction | EdgeSLMError]:
        """:meth:`extract` for many documents: results in input order, each an :class:`Extraction`
        or the :class:`EdgeSLMError` of that item (a text longer than the context, no valid
        output...), so one bad document never loses the batch. A schema that cannot be served
        raises at once. Other keyword arguments are those of :meth:`extract`.

        Up to ``batch_size`` items decode together in one context of the engine, each with its own
        grammar, retries and validation (``None``: decided on the items, measured: the first two
        run one at a time, then the rest decode together at the size, from 8 up to 32 as memory
        allows, where a decode step gives the most tokens/s, only where the whole extraction is
        predicted to gain, see the batching guide; ``1``: one at a time). A prompt prefix the items
        share (instructions, schema, examples) is evaluated once. Greedy results are those of :meth:`extract`, except
        where the model hesitates between two tokens (an engine rounds a batch differently). Engines
        that hold one sequence per context (ONNX Runtime GenAI) run one item at a time.
        ``progress=True`` shows a progress bar with items/s."""
        out: dict[int, Extraction | EdgeSLMError] = {}
        for i, r in self.extract_iter(texts, schema, batch_size=batch_size, progress=progress, **extract_kwargs):
            out[i] = r
        return [out[i] for i in range(len(out))]

    def extract_iter(
        self, texts: Iterable[str], schema: Any, *, batch_size: int | None = None, progress: bool = False,
        **extract_kwargs: Any,
    ) -> Iterator[tuple[int, Extraction | EdgeSLMError]]:
        """Like :meth:`extract_many`, yielding ``(index, result)`` as each item finishes (not in input
        order when items decode together); *texts* may be any iterable, read lazily (lines of a file).
        The model is held until the iterator is exhausted or closed. ``adapter``: as in :meth:`extract`."""
        from .batch import extract_iter

        adapter = extract_kwargs.pop("adapter", None)
        return extract_iter(self._using(adapter), texts, schema, batch_size=batch_size, progress=progress,
                            **extract_kwargs)

    def _escalation(self, escalation: Any) -> Any:
        """The escalation of one call: its own, the model's (``None``), or none (``False``)."""
        if escalation is False:
            return None
        if escalation is None:
            return self.escalation
        check_escalation(escalation)
        return escalation

    def stats(self) -> dict[str, Any]:
        """Counters of the model's escalation (calls seen, kept local, escalated, the escalation rate,
        triggers, failures, bytes sent, mean latency); all zero without an escalation."""
        from ..escalation.policy import EscalationStats

        return (self.escalation.stats if self.escalation is not None else EscalationStats()).snapshot()

    def _extract_local(
        self, text: str, schema: Any, instructions: str | None, examples: Sequence[Any] | None,
        max_tokens: int | None, temperature: float, seed: int | None, retries: int | None,
    ) -> Extraction:
        from .extract import ExtractionPlan, extraction_messages, prepare_schema

        check_text(text, "text")
        if not text.strip():
            raise InvalidRequestError("text is empty: there is nothing to extract from",
                                      hint="pass the text to extract the data from")
        if instructions is not None:
            check_text(instructions, "instructions")
        check_max_tokens(max_tokens)
        plan = schema if isinstance(schema, ExtractionPlan) else prepare_schema(schema)
        msgs = extraction_messages(text, plan.schema, instructions, examples)
        params = SamplingParams(temperature=temperature, seed=seed)
        run = self._extract_run(msgs, plan, max_tokens, params, retries, lookup=text)
        last = run.last
        return Extraction(
            data=run.value, confidence=last.confidence, raw=last.text, usage=run.usage,
            attempts=run.count, escalated=False, support=plan.support, field_confidence=last.fields,
            scores=last.scores, model=self.name,
        )

    def _extract_run(
        self, messages: Sequence[Message], plan: Any, max_tokens: int | None, params: SamplingParams,
        retries: int | None, *, lookup: str | None = None,
    ) -> Attempts[Attempt]:
        from .extract import run_extraction

        check_int(retries, "retries", minimum=0, allow_none=True, hint="pass retries=0 for a single attempt")
        check_max_tokens(max_tokens)
        with self._gen.holding() as engine:
            prompt = self._gen.prompt_tokens(engine, self._chat_segments(engine, messages))
            budget = max_tokens if max_tokens is not None else max(1, min(AUTO_MAX_TOKENS, engine.n_ctx - len(prompt)))
            return run_extraction(self._gen, engine, prompt, plan, max_tokens=budget, sampling=params,
                                  retries=retries, lookup=lookup)

    def _chat_json(
        self, messages: Sequence[Message], schema: Any, max_tokens: int | None, params: SamplingParams, stream: bool,
    ) -> Any:
        from .extract import prepare_schema

        plan = prepare_schema(schema)
        run = self._extract_run(messages, plan, max_tokens, params, None)
        usage = run.usage
        result = ChatResult(text=run.last.text, finish_reason="stop", usage=usage, model=self.name,
                            confidence=run.last.confidence)
        if not stream:
            return result
        # only validated JSON is ever shown, so the stream yields the whole object at once
        return ChatStream(iter([ChatChunk(result.text, model=self.name, id=result.id),
                                ChatChunk("", "stop", usage, model=self.name, id=result.id)]))

    def _run(
        self, prompt_fn: Any, params: SamplingParams, max_tokens: int | None, stops: list[str], stream: bool
    ) -> Any:
        max_tokens = max_tokens_or_auto(max_tokens)
        if stream:
            return self._gen.stream(lambda h: self._gen.text_stream(prompt_fn, params, max_tokens, stops, h))
        chunks = list(self._gen.text_stream(prompt_fn, params, max_tokens, stops))
        last = chunks[-1]
        assert last.usage is not None and last.finish_reason is not None
        return ChatResult(
            text="".join(c.delta for c in chunks),
            finish_reason=last.finish_reason,
            usage=last.usage,
            model=self.name,
            id=last.id,
        )


def _response_schema(response_format: dict[str, Any] | None) -> Any:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return response_format.get("schema") or {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            raise SchemaError(
                "response_format json_schema has no 'schema'",
                hint='use {"type": "json_schema", "json_schema": {"name": "...", "schema": {...}}}',
            )
        return schema
    raise SchemaError(
        f"unknown response_format {response_format!r}",
        hint='use {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", ...}',
    )


def _has_tool_messages(messages: Sequence[Message]) -> bool:
    return any(
        isinstance(m, dict) and (m.get("role") in ("tool", "ipython", "function") or m.get("tool_calls"))
        for m in messages
    ) if isinstance(messages, Sequence) and not isinstance(messages, (str, bytes)) else False


def _default_tool_format(engine: Backend, template: ChatTemplate | None, info: Any) -> str:
    entry = getattr(info, "entry", None)
    fmt = getattr(entry, "tool_format", None)
    if isinstance(fmt, str) and fmt:
        return fmt
    from ..tools.formats import detect_tool_format
    from .tool_use import tag_token

    def has_token(t: str) -> bool:  # a control or user-defined token (Qwen 2.5's <tool_call>)
        try:
            return tag_token(engine, t) is not None
        except Exception:
            return False

    arch = str((getattr(engine, "metadata", None) or {}).get("general.architecture", ""))
    return detect_tool_format(template.source if template is not None else None, has_token, arch)


def _stops(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if s]


def _normalize_messages(messages: Sequence[Message]) -> list[Message]:
    """The plain ``{role, content}`` messages a tool format prepared (contents as strings)."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise TypeError(f"messages[{i}] must be a dict with a 'role'")
        m = dict(m)
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            m["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        elif content is None:
            m["content"] = ""
        elif not isinstance(content, str):
            raise TypeError(f"messages[{i}]['content'] must be a string")
        out.append(m)
    return out


def _message_chars(messages: Sequence[Any]) -> int:
    """Characters of text in *messages* (contents, and the text of content parts)."""
    n = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            n += len(content)
        elif isinstance(content, list):
            n += sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return n
