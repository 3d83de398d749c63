"""Structured extraction on the real bundled models: every returned object validates."""

from __future__ import annotations

import json
import subprocess
import sys
from enum import Enum
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

import edgeslm
from edgeslm.decoding.schema import make_validator

TICKET = "Hi, this is Dana Reyes. Since this morning the checkout page of our web shop returns error 502. Urgent!"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
}


class Severity(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"


class Ticket(BaseModel):
    customer: str
    product: str = Field(description="the product or page affected")
    severity: Severity
    error_code: int | None = None


def test_pydantic_class_gives_validated_instance(smollm2) -> None:
    x = smollm2.extract(TICKET, Ticket)
    assert isinstance(x, edgeslm.Extraction)
    assert isinstance(x.data, Ticket)
    assert isinstance(x.data.severity, Severity)
    assert 0.0 < x.confidence <= 1.0
    assert x.escalated is False
    assert x.usage.completion_tokens > 0 and x.usage.forced_tokens > 0
    assert x.support.level == "exact"
    d = x.to_dict()
    assert d["data"]["customer"] == x.data.customer


def test_dict_schema_gives_valid_compact_json(smollm2) -> None:
    x = smollm2.extract("John Smith is 42 years old and lives in Boston.", PERSON)
    assert not list(make_validator(PERSON).iter_errors(x.data))
    assert x.raw == json.dumps(x.data, separators=(",", ":"), ensure_ascii=False)
    assert set(x.data) == {"name", "age", "city"}  # unnamed keys are not invented


def test_greedy_extraction_is_reproducible(smollm2) -> None:
    a = smollm2.extract("Maria, aged 31, moved to Lisbon last year.", PERSON)
    smollm2.generate("something else", max_tokens=3)
    b = smollm2.extract("Maria, aged 31, moved to Lisbon last year.", PERSON)
    assert a.data == b.data and a.raw == b.raw


def test_forced_tokens_carry_no_confidence(smollm2) -> None:
    schema = {"type": "object", "properties": {"kind": {"const": "invoice"}, "ok": {"const": True}},
              "required": ["kind", "ok"]}
    x = smollm2.extract("anything", schema)
    assert x.data == {"kind": "invoice", "ok": True}
    assert x.usage.forced_tokens == x.usage.completion_tokens
    assert x.confidence == 1.0


def test_relaxed_schema_is_served_and_validated(smollm2) -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "uniqueItems": True,
                     "minItems": 1, "maxItems": 4},
            "code": {"type": "string", "not": {"const": "none"}},
        },
        "required": ["tags", "code"],
    }
    support = edgeslm.check_schema(schema)
    assert support.level == "relaxed"
    assert any("uniqueItems" in u for u in support.unenforced)
    assert any("not" in u for u in support.unenforced)
    for text in ["Tag this: red, green, blue. Code AB12.", "Tags: alpha, beta. Code X9."]:
        x = smollm2.extract(text, schema)
        assert not list(make_validator(schema).iter_errors(x.data))
        assert x.support.level == "relaxed"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "nonsense"},
        {"$ref": "https://example.com/schema.json"},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
        False,
    ],
)
def test_unservable_schema_is_a_clear_error(smollm2, schema) -> None:
    with pytest.raises(edgeslm.SchemaError) as e:
        smollm2.extract("text", schema)
    assert e.value.hint


def test_not_a_schema_type_error(smollm2) -> None:
    with pytest.raises(edgeslm.SchemaError):
        smollm2.extract("text", 42)


def test_extraction_failed_carries_last_output_and_errors(smollm2) -> None:
    schema = {"type": "object", "properties": {"story": {"type": "string", "minLength": 200}}, "required": ["story"]}
    with pytest.raises(edgeslm.ExtractionFailed) as e:
        smollm2.extract("Write a story.", schema, max_tokens=12, retries=1)
    err = e.value
    assert err.attempts == 2
    assert err.last_output.startswith('{"story":"')
    assert err.errors and "cut off" in err.errors[0]
    assert isinstance(err, edgeslm.EdgeSLMError)


def test_validation_failure_after_retries_lists_the_errors(smollm2) -> None:
    # the grammar cannot enforce uniqueItems, and no array of two or more 1s is unique
    schema = {"type": "array", "items": {"const": 1}, "minItems": 2, "uniqueItems": True}
    assert edgeslm.check_schema(schema).level == "relaxed"
    with pytest.raises(edgeslm.ExtractionFailed) as e:
        smollm2.extract("ones", schema, retries=2)
    assert e.value.attempts == 3
    assert json.loads(e.value.last_output)[:2] == [1, 1]
    assert any("non-unique" in err for err in e.value.errors), e.value.errors


def test_greedy_extraction_with_retries_is_reproducible(smollm2) -> None:
    # no string satisfies `not: {pattern: "^"}`, so every attempt fails validation and is re-sampled
    schema = {"type": "string", "minLength": 3, "maxLength": 40, "not": {"pattern": "^"}}
    outputs = []
    for _ in range(2):
        with pytest.raises(edgeslm.ExtractionFailed) as e:
            smollm2.extract("Name a fruit.", schema, retries=3)
        outputs.append(e.value.last_output)
    assert outputs[0] == outputs[1]
    from edgeslm.decoding.sampling import SamplingParams, retry_params

    assert retry_params(SamplingParams(), 2).seed == 2 and retry_params(SamplingParams(seed=5), 2).seed == 7
    assert retry_params(SamplingParams(temperature=0.8), 1).seed is None  # sampling without a seed stays random


def test_a_value_cut_off_by_max_tokens_is_never_returned(smollm2) -> None:
    # "12" of "123456789" parses as an integer; it must count as cut off, not as an answer
    with pytest.raises(edgeslm.ExtractionFailed) as e:
        smollm2.extract("The number is 123456789.", {"type": "integer"}, max_tokens=2, retries=1)
    assert "cut off" in e.value.errors[0]
    x = smollm2.extract("The number is 123456789.", {"type": "integer"}, max_tokens=16)
    assert x.data == 123456789


def test_a_runaway_number_is_steered_to_end(smollm2) -> None:
    import numpy as np

    from edgeslm.decoding.constrain import MAX_NUMBER_CHARS, GrammarConstraint, JsonWrapUp, closing_tokens
    from edgeslm.decoding.schema import grammar_for

    engine = smollm2._engine
    grammar = grammar_for({"type": "array", "items": {"type": "number"}})
    c, wrap = GrammarConstraint(engine, grammar), JsonWrapUp.for_backend(engine)
    digit = engine.tokenize("7", special=False)[-1]
    out: list[int] = []
    text = "["
    for t in engine.tokenize("[", special=False):
        c.consume(t)
        out.append(t)
    for _ in range(MAX_NUMBER_CHARS + 2):
        logits = np.zeros(engine.n_vocab, dtype=np.float32)
        logits[digit] = 30.0  # the model "wants" another digit, forever
        c.mask(logits)
        wrap(out, logits)  # the processor, as the loop calls it
        t = int(np.argmax(logits))
        c.consume(t)
        out.append(t)
        text += engine.token_bytes(t).decode()
        if t != digit:
            break
    # the number grew to the limit, then a token that ends it won (it was allowed: ',' or ']')
    assert text[1:].rstrip(",]").isdigit() and len(text[1:].rstrip(",]")) == MAX_NUMBER_CHARS, text
    assert text[-1] in ",]" and wrap.steered and not wrap.on
    # a number that cannot end yet (after "e") is never cut: only allowed tokens are boosted
    c2, wrap2 = GrammarConstraint(engine, grammar_for({"type": "number"})), JsonWrapUp.for_backend(engine)
    out2 = [*engine.tokenize("1" * (MAX_NUMBER_CHARS - 1), special=False), *engine.tokenize("e", special=False)]
    for t in out2:
        c2.consume(t)
    logits = np.zeros(engine.n_vocab, dtype=np.float32)
    c2.mask(logits)
    wrap2(out2, logits)
    assert wrap2.scan.number_len == MAX_NUMBER_CHARS
    assert not wrap2.steered and np.isneginf(logits[closing_tokens(engine).enders]).all()


def test_tighten_narrows_the_generation_grammar_only() -> None:
    from edgeslm.decoding.narrow import tighten

    schema = {
        "type": "object",
        "properties": {
            "note": {"type": "string"},
            "when": {"type": "string", "pattern": "\\d{4}-\\d{2}"},
            "id": {"type": "string", "pattern": "^[a-z]+$"},
        },
        "required": ["id", "when"],
        "not": {"properties": {"note": {"pattern": "x"}}},
    }
    t = tighten(schema)
    assert list(t["properties"]) == ["when", "id", "note"]  # required first, in schema order
    assert t["properties"]["when"]["pattern"] == "^(?:\\d{4}-\\d{2})"
    assert t["properties"]["id"]["pattern"] == "^[a-z]+$"
    assert t["additionalProperties"] is False
    assert t["not"] == schema["not"]  # narrowing inside `not` would widen the schema
    assert list(schema["properties"]) == ["note", "when", "id"]  # the input is not modified


def test_required_keys_come_first_and_unanchored_patterns_match_at_the_start(smollm2) -> None:
    import re

    schema = {
        "type": "object",
        "properties": {
            **{f"extra_{i}": {"type": "string"} for i in range(12)},
            "order_date": {"type": "string", "pattern": "\\d{4}-\\d{2}-\\d{2}"},
        },
        "required": ["order_date"],
    }
    x = smollm2.extract("Order placed on 2024-03-15 by Dana.", schema, max_tokens=96)
    assert x.raw.startswith('{"order_date":"'), x.raw
    assert re.match(r"\d{4}-\d{2}-\d{2}", x.data["order_date"]), x.data


def test_forced_tokens_are_evaluated_in_batches(smollm2) -> None:
    schema = {"type": "object", "properties": {"customer_name": {"type": "string"},
                                               "customer_email_address": {"type": "string"}},
              "required": ["customer_name", "customer_email_address"]}
    engine = smollm2._engine
    calls: list[int] = []
    real_eval = engine.eval

    def counting_eval(tokens):
        calls.append(len(tokens))
        return real_eval(tokens)

    engine.eval = counting_eval
    try:
        x = smollm2.extract("Dana Reyes, dana@example.com", schema, retries=0)
    finally:
        del engine.eval
    assert x.usage.forced_tokens >= 8
    decode_calls = calls[2:]  # after the prompt (a batch, then its last token)
    assert len(decode_calls) < x.usage.completion_tokens - x.usage.forced_tokens // 2
    assert max(decode_calls) > 2  # a chosen token plus the tokens it forces, in one call


def test_closing_a_model_frees_its_cached_grammars(smollm2_path) -> None:
    from edgeslm.decoding import constrain

    m = edgeslm.load(str(smollm2_path), n_ctx=512)
    m.extract("Ann, 30, Oslo", PERSON, max_tokens=32, retries=0)
    engine = m._engine
    cache = constrain.constraints(engine)
    assert len(cache) >= 1 and cache._tokenizer is not None
    m.close()  # the llguidance tokenizer points into llama.cpp's vocabulary: dropped with it
    assert len(cache) == 0 and cache._tokenizer is None


def test_examples_and_instructions(smollm2) -> None:
    schema = {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative"]}},
              "required": ["sentiment"]}
    x = smollm2.extract(
        "I hate waiting, this is awful.", schema,
        instructions="Classify the sentiment of the review.",
        examples=[("Great product, love it!", {"sentiment": "positive"}),
                  {"input": "Broke after a day.", "output": {"sentiment": "negative"}}],
    )
    assert x.data["sentiment"] in ("positive", "negative")


def test_shared_prefix_is_reused(smollm2) -> None:
    instructions = "You extract people from HR notes for ACME. " * 10
    smollm2.generate("reset the cache", max_tokens=1)
    a = smollm2.extract("Note: Ann Lee, 29, Paris.", PERSON, instructions=instructions)
    b = smollm2.extract("Note: Bo Chan, 51, Oslo.", PERSON, instructions=instructions)
    assert a.usage.reused_prompt_tokens < 10
    # everything but the last user message is shared
    assert b.usage.reused_prompt_tokens >= b.usage.prompt_tokens - 20


def test_response_format_json_schema(smollm2) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    r = smollm2.chat([{"role": "user", "content": "Invent a person as JSON."}], response_format=rf, max_tokens=80)
    assert not list(make_validator(PERSON).iter_errors(json.loads(r.text)))
    chunks = list(smollm2.chat([{"role": "user", "content": "Invent a person."}], response_format=rf,
                               max_tokens=80, stream=True))
    assert json.loads("".join(c.delta for c in chunks))
    r = smollm2.chat([{"role": "user", "content": "Any JSON object"}], response_format={"type": "json_object"},
                     max_tokens=40)
    assert isinstance(json.loads(r.text), dict)
    with pytest.raises(edgeslm.SchemaError):
        smollm2.chat([{"role": "user", "content": "x"}], response_format={"type": "yaml"})


def test_gemma_large_vocabulary(gemma) -> None:
    x = gemma.extract("John Smith is 42 years old and lives in Boston.", PERSON)
    assert not list(make_validator(PERSON).iter_errors(x.data))


def test_base_model_without_template_gets_plain_text_prompts(gemma) -> None:
    """The bundled Gemma-3-270M is a base model whose file has no chat template: it is prompted in
    plain text, which it reads, not in Gemma's turn tokens, which it never learned."""
    from edgeslm.decoding.template import GEMMA_TEMPLATE, ChatTemplate

    assert "<start_of_turn>" not in gemma.template.render_text([{"role": "user", "content": "hi"}])
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
              "required": ["name", "email"]}
    docs = [("Laura Mendes", "laura.mendes@brightwave.io"), ("Tomasz Nowak", "t.nowak@kestrel-logistics.co.uk"),
            ("Aiko Tanaka", "aiko@tanaka-design.jp")]
    texts = [f"Hi team, please add {n} ({e}) to the shared contacts list. Thanks!" for n, e in docs]
    plain = [gemma.extract(t, schema).data for t in texts]
    saved, gemma.template = gemma.template, ChatTemplate(GEMMA_TEMPLATE, bos_token="<bos>", eos_token="<eos>")
    try:
        turns = [gemma.extract(t, schema).data for t in texts]
    finally:
        gemma.template = saved
    right = [sum(x == {"name": n, "email": e} for x, (n, e) in zip(got, docs, strict=True)) for got in (plain, turns)]
    assert right[0] >= 2 and right[0] > right[1], (plain, turns)


def test_cli_extract(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(PERSON))
    out = subprocess.run(
        [sys.executable, "-m", "edgeslm", "extract", "-m", "smollm2-135m", "-s", str(schema), "--compact", "-"],
        input="Maria, aged 31, moved to Lisbon.", capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert not list(make_validator(PERSON).iter_errors(json.loads(out.stdout)))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "edgeslm", "extract", "-s", str(bad), "-"], input="x",
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "schema" in out.stderr


CONTACT = {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"},
                                            "phone": {"type": "string"}},
           "required": ["name", "email", "phone"]}
CONTACT_DOCS = [
    "Please get in touch with Laura Mendes at laura.mendes@brightwave.io or call +1 415 555 0142.",
    "Contact: Tomasz Nowak (t.nowak@kestrel-logistics.co.uk), phone 020 7946 0321, Kestrel Logistics.",
    "For invoices write to Priya Raman, priya@solacehealth.com, tel. (312) 555-0187.",
]


def test_text_copied_from_the_document_is_checked_in_one_engine_call(smollm2) -> None:
    engine = smollm2._engine
    calls = {"eval": 0, "rows": 0}
    real_eval, real_rows = engine.eval, engine.eval_rows

    def count_eval(tokens):  # type: ignore[no-untyped-def]
        calls["eval"] += 1
        return real_eval(tokens)

    def count_rows(tokens, n):  # type: ignore[no-untyped-def]
        calls["rows"] += 1
        return real_rows(tokens, n)

    engine.eval, engine.eval_rows = count_eval, count_rows
    try:
        drafted = [smollm2.extract(d, CONTACT) for d in CONTACT_DOCS]
        with_drafts = dict(calls)
        assert smollm2.extract(CONTACT_DOCS[0], CONTACT).data == drafted[0].data  # reproducible
        calls.update(eval=0, rows=0)
        engine.verifies = False  # the same extractions without drafts: one engine call per chosen token
        plain = [smollm2.extract(d, CONTACT) for d in CONTACT_DOCS]
    finally:
        del engine.eval, engine.eval_rows
        engine.__dict__.pop("verifies", None)
    assert with_drafts["rows"] > 0 and calls["rows"] == 0
    assert sum(with_drafts.values()) < 0.8 * calls["eval"], (with_drafts, calls)
    for a, b, doc in zip(drafted, plain, CONTACT_DOCS, strict=True):
        assert a.data["email"].split("@")[-1] in doc  # copied from the document
        if a.data != b.data:  # only where the model nearly tied (logits from a call of several tokens)
            assert b.scores["min_margin"] < 0.1, (a.data, b.data, b.scores)
