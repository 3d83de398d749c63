"""Structured extraction: a JSON Schema (or pydantic class) in, a validated object out.

How one extraction runs:

1. ``check_schema`` decides what the grammar can enforce (``exact``), what it only approximates
   (``relaxed``: the grammar accepts a superset, and the keywords it cannot enforce are listed), or
   refuses the schema with the reason.
2. Decoding is constrained by that grammar (llguidance) inside edgeslm's own loop: tokens the
   grammar forces are evaluated as one batch; output is compact JSON. Unbounded strings and arrays
   are capped (``max_string`` / ``max_items``) so a looping small model cannot run away.
3. Every result is parsed and validated with ``jsonschema`` against the *original* schema (and by
   pydantic when a class was given). A failed attempt (invalid, cut off, or caught repeating
   itself) is retried with sampling, a bounded number of times; then :class:`ExtractionFailed`
   carries the last output and the validation errors. Invalid data is never returned.

A generation that repeats itself, or uses most of its token budget, is steered to close the JSON
as early as the grammar allows, and a number that runs past 24 characters (longer than any
float64 needs) is steered to end. Only allowed tokens are boosted, so validity is unaffected;
the confidence (and every candidate score) of a steered output is capped at 0.5.

Confidence starts from the geometric mean of the probabilities of the tokens the model chose
freely, each taken from the grammar-masked distribution (tokens the grammar forced carry no
information and are excluded): ``exp(mean(log p))``; each value the text does not contain (a
string not in it, a number it does not write) then multiplies it by that value's own score. 1.0
means every free choice was certain. It is the candidate ``grounded_prob``
(:data:`edgeslm.decoding.scores.DEFAULT_CONFIDENCE`), chosen on outside data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import ExtractionFailed, InvalidRequestError, SchemaError
from ..decoding.loop import GenStats, PromptLookup, generate_steps
from ..decoding.narrow import tighten
from ..decoding.sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..decoding.support import SchemaSupport
    from .generation import Attempts, Generation

__all__ = ["ExtractionPlan", "constrained_json", "extraction_messages", "prepare_schema", "tighten"]

DEFAULT_MAX_STRING = 256
DEFAULT_MAX_ITEMS = 64
DEFAULT_INSTRUCTIONS = (
    "Extract the requested information from the user's text. Reply with one JSON object that "
    "matches this JSON Schema, using only facts from the text."
)


@dataclass
class ExtractionPlan:
    """A schema ready to generate with: its support level, grammar and validators."""

    schema: Any  # the JSON Schema (dict or bool)
    support: SchemaSupport
    grammar: str
    #: The JSON Schema ``grammar`` was compiled from (the checked schema, narrowed and capped).
    grammar_schema: dict[str, Any] = dataclasses.field(kw_only=True)
    validator: Any
    model_class: type | None = None

    def validate(self, text: str) -> tuple[Any, list[str]]:
        """Parse and validate *text*: ``(data, [])`` or ``(None, errors)``."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            return None, [f"not JSON: {exc}"]
        except RecursionError:
            return None, ["nested too deeply to be read"]
        errors = [
            f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in self.validator.iter_errors(value)
        ]
        if errors:
            return None, errors[:20]
        if self.model_class is not None:
            try:
                return self.model_class.model_validate(value), []
            except Exception as exc:  # pydantic.ValidationError, without importing pydantic
                return None, [f"pydantic: {exc}"]
        return value, []


def prepare_schema(
    schema: Any, *, max_string: int | None = DEFAULT_MAX_STRING, max_items: int | None = DEFAULT_MAX_ITEMS
) -> ExtractionPlan:
    """Check, compile (cached) and wrap a schema; raise :class:`SchemaError` when it is refused."""
    from ..decoding.grammar import compile_grammar
    from ..decoding.normalize import make_validator, normalize_schema
    from ..decoding.support import check_schema

    model_class = schema if isinstance(schema, type) else None
    plain = normalize_schema(schema)
    support = check_schema(plain)
    if not support:
        raise SchemaError(
            f"this schema cannot be served: {support.reason}",
            hint="edgeslm.check_schema(schema) explains what is wrong; fix or simplify the schema",
        )
    tight = dataclasses.replace(support, grammar_schema=tighten(support.grammar_schema))
    try:
        grammar, compiled = compile_grammar(tight, compact=True, max_string=max_string, max_items=max_items)
    except SchemaError:
        # The tightenings can exceed what the grammar engine decides (e.g. a length cap on a
        # complex pattern): fall back to the grammar of the checked schema itself.
        grammar, compiled = compile_grammar(support, compact=True)
    return ExtractionPlan(plain, support, grammar, make_validator(plain), model_class, grammar_schema=compiled)


def extraction_messages(
    text: str,
    schema: Any,
    instructions: str | None = None,
    examples: Sequence[Any] | None = None,
) -> list[dict[str, str]]:
    """The conversation for one extraction. Everything but the last message depends only on the
    instructions, schema and examples, so repeated extractions reuse its KV cache."""
    system = f"{instructions or DEFAULT_INSTRUCTIONS}\nJSON Schema: {json.dumps(schema, separators=(',', ':'))}"
    msgs = [{"role": "system", "content": system}]
    if examples is not None and (isinstance(examples, (str, bytes, dict)) or not isinstance(examples, Sequence)):
        raise TypeError("examples must be a list of (input, output) pairs or {'input': ..., 'output': ...} dicts")
    for i, ex in enumerate(examples or ()):
        if isinstance(ex, dict) and "input" in ex and "output" in ex:
            inp, out = ex["input"], ex["output"]
        elif isinstance(ex, (tuple, list)) and len(ex) == 2:
            inp, out = ex
        else:
            raise InvalidRequestError(
                f"examples[{i}] is not an (input, output) pair",
                hint="pass examples=[(text, expected_output), ...] or [{'input': text, 'output': expected}, ...]",
            )
        if hasattr(out, "model_dump"):
            out = out.model_dump(mode="json")
        if not isinstance(out, str):
            try:
                out = json.dumps(out, ensure_ascii=False)  # as written: what redact and the model see
            except (TypeError, ValueError, RecursionError) as exc:
                raise InvalidRequestError(f"examples[{i}]: the output is not JSON data: {exc}",
                                          hint="give outputs as dicts, lists and plain values") from None
        msgs.append({"role": "user", "content": str(inp)})
        msgs.append({"role": "assistant", "content": out})
    msgs.append({"role": "user", "content": text})
    return msgs


@dataclass
class Attempt:
    """One constrained generation."""

    text: str
    complete: bool
    wrapped_up: bool
    confidence: float
    stats: GenStats
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    """Candidate confidence scores (:func:`edgeslm.decoding.scores.candidate_scores`)."""
    fields: dict[str, float] = dataclasses.field(default_factory=dict)
    """JSON pointer -> the lowest free-token probability of that value."""


def constrained_json(
    engine: Backend,
    prompt: list[int],
    plan: ExtractionPlan,
    *,
    max_tokens: int,
    params: SamplingParams,
    lookup: str | None = None,
) -> Attempt:
    """Generate once under the plan's grammar.

    With *lookup* (the document) and greedy decoding, what follows in it the bytes just written is
    proposed and checked in the same engine call (:class:`~edgeslm.decoding.loop.PromptLookup`); the
    ``grounded_prob`` score looks up the values written in it (any decoding).

    When the output starts repeating itself, or has used 60 % of ``max_tokens``, generation is
    steered to close the JSON as soon as the grammar allows; a number that runs past 24
    characters is steered to end (the :class:`~edgeslm.decoding.constrain.JsonWrapUp` processor).
    """
    from ..decoding.constrain import GrammarConstraint, JsonWrapUp
    from ..decoding.scores import DEFAULT_CONFIDENCE, TokenScore, candidate_scores, field_scores, grounded_fields

    constraint = GrammarConstraint(engine, plan.grammar)
    wrap = JsonWrapUp.for_backend(engine, soft_limit=max(16, int(max_tokens * 0.6)))
    stats = GenStats()
    pieces: list[bytes] = []
    scored: list[TokenScore] = []
    at = 0
    draft = None
    if lookup and params.greedy and engine.verifies:
        draft = PromptLookup(lookup.encode("utf-8", errors="replace"), lambda t: engine.tokenize(t, special=False))
    steps = generate_steps(engine, prompt, Sampler(params), max_tokens, constraint=constraint, processors=[wrap],
                           logprobs=True, stats=stats, draft=draft)
    try:
        for step in steps:
            pieces.append(step.piece)
            free = not step.forced and step.logprob is not None and not wrap.on
            scored.append(TokenScore(at, at + len(step.piece), step.logprob if free else None, step.margin))
            at += len(step.piece)
    finally:
        steps.close()
    output = b"".join(pieces)
    fields = field_scores(scored, output)
    grounded = grounded_fields(output, lookup, fields) if lookup else None
    # steered: the model did not finish (a value, or the JSON) by itself; every score says so (<= 0.5)
    scores = candidate_scores(scored, fields, steered=wrap.on or wrap.steered, grounded=grounded)
    conf = scores[DEFAULT_CONFIDENCE]  # chosen on outside data: see DEFAULT_CONFIDENCE
    text = output.decode("utf-8", errors="replace")
    # complete: the grammar ended it, or the model chose to stop where the grammar allows. A value
    # cut off by max_tokens can still parse ("12" of "123456789"), so accepting() is not enough.
    complete = constraint.accepting() and (constraint.done() or not stats.hit_limit)
    return Attempt(text, complete, wrap.on or wrap.steered, conf, stats, scores, fields)


def run_extraction(
    service: Generation,
    engine: Backend,
    prompt: list[int],
    plan: ExtractionPlan,
    *,
    max_tokens: int,
    sampling: SamplingParams,
    retries: int | None,
    lookup: str | None = None,
) -> Attempts[Attempt]:
    """Attempt up to ``1 + retries`` times through the service's one retry loop
    (:meth:`~edgeslm.api.generation.Generation.constrained`); raise :class:`ExtractionFailed` when no
    attempt validated. ``retries=None`` picks 2 for schemas the grammar enforces exactly and 3 for
    relaxed ones."""
    from .generation import default_retries

    n = default_retries(plan.support.exact) if retries is None else retries

    def attempt(i: int, params: SamplingParams) -> Attempt:
        return constrained_json(engine, prompt, plan, max_tokens=max_tokens, params=params, lookup=lookup)

    def check(att: Attempt) -> tuple[Any, list[str]]:
        if not att.complete:
            return None, [f"the output was cut off at {att.stats.completion_tokens} tokens (max_tokens)"]
        return plan.validate(att.text)

    result = service.constrained(attempt, check, sampling, n)
    if result.ok:
        return result
    raise ExtractionFailed(
        f"no output validated against the schema in {n + 1} attempts: {'; '.join(result.errors[:3])}",
        last_output=result.last.text,
        errors=result.errors,
        attempts=n + 1,
        hint="raise max_tokens=, give instructions= or examples=, simplify the schema, or use a larger model",
    )
