"""Chat, generate and streaming on the two real bundled models."""

from __future__ import annotations

import threading
import time

import pytest

import edgeslm

Q = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_chat_and_stream_agree(name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(name)
    r = model.chat(Q, max_tokens=24, temperature=0)
    assert isinstance(r, edgeslm.ChatResult)
    assert r.text.strip()
    assert r.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 24
    assert r.usage.prompt_tokens > 5
    assert r.usage.time_to_first_token_s > 0
    chunks = list(model.chat(Q, max_tokens=24, temperature=0, stream=True))
    assert all(isinstance(c, edgeslm.ChatChunk) for c in chunks)
    assert chunks[-1].finish_reason == r.finish_reason and chunks[-1].usage is not None
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert "".join(c.delta for c in chunks) == r.text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_to_dict_is_openai_shaped(smollm2) -> None:
    d = smollm2.chat(Q, max_tokens=8, temperature=0).to_dict()
    assert d["object"] == "chat.completion"
    assert d["model"] == "smollm2-135m"
    choice = d["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    u = d["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    chunk = next(iter(smollm2.chat(Q, max_tokens=4, stream=True))).to_dict()
    assert chunk["object"] == "chat.completion.chunk"


def test_model_attributes(smollm2, smollm2_path) -> None:
    assert smollm2.path == str(smollm2_path)
    assert smollm2.backend == "llama.cpp"
    assert smollm2.device == "cpu"
    assert smollm2.n_ctx == 2048


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_greedy_is_reproducible(name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(name)
    a = model.chat(Q, max_tokens=32, temperature=0).text
    model.generate("Unrelated text to disturb the cache", max_tokens=4)
    b = model.chat(Q, max_tokens=32, temperature=0).text
    assert a == b


def test_seeded_sampling_is_reproducible_and_seed_matters(smollm2) -> None:
    kw = dict(max_tokens=32, temperature=1.0, top_p=0.95, top_k=0)
    a = smollm2.chat(Q, seed=1, **kw).text
    b = smollm2.chat(Q, seed=1, **kw).text
    assert a == b
    others = {smollm2.chat(Q, seed=s, **kw).text for s in range(2, 6)}
    assert len(others | {a}) > 1


def test_max_tokens_gives_length(smollm2) -> None:
    r = smollm2.generate("Count: 1, 2, 3,", max_tokens=5, temperature=0)
    assert r.finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_stop_strings(smollm2) -> None:
    full = smollm2.generate("Count: 1, 2, 3,", max_tokens=20, temperature=0).text
    assert "," in full
    r = smollm2.generate("Count: 1, 2, 3,", max_tokens=20, temperature=0, stop=[","])
    assert r.finish_reason == "stop"
    assert "," not in r.text
    assert full.startswith(r.text)


def test_generate_plain_text_on_base_model(gemma) -> None:
    r = gemma.generate("Monday, Tuesday, Wednesday,", max_tokens=6, temperature=0)
    assert "Thursday" in r.text


def test_sampling_parameters_validated(smollm2) -> None:
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_k": -1}, {"max_tokens": 0}):
        with pytest.raises(edgeslm.InvalidRequestError) as e:
            smollm2.chat(Q, **bad)
        assert isinstance(e.value, ValueError) and e.value.hint


def test_empty_prompt_is_a_clear_error_not_stale_logits(smollm2, gemma) -> None:
    smollm2.generate("The capital of France is", max_tokens=2, temperature=0)  # leaves logits behind
    with pytest.raises(edgeslm.InvalidRequestError, match="empty"):
        smollm2.generate("", max_tokens=4)
    # Gemma adds a BOS token, so an empty prompt is a real (one-token) prompt
    assert gemma.generate("", max_tokens=2, temperature=0).usage.prompt_tokens == 1


def test_context_overflow_is_a_clear_error(smollm2) -> None:
    long = "word " * 5000
    with pytest.raises(edgeslm.ContextLengthError) as e:
        smollm2.chat([{"role": "user", "content": long}], max_tokens=8)
    assert e.value.n_ctx == 2048 and e.value.n_prompt > 2048
    assert "n_ctx" in str(e.value)
    assert smollm2.chat(Q, max_tokens=4, temperature=0).text  # still usable


def test_concurrent_threads_get_correct_answers(smollm2) -> None:
    prompts = [f"Write the number {i} in words." for i in range(8)]
    expected = [
        smollm2.chat([{"role": "user", "content": p}], max_tokens=12, temperature=0).text for p in prompts
    ]
    results: list[str | None] = [None] * 8
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            msgs = [{"role": "user", "content": prompts[i]}]
            if i % 2:
                results[i] = "".join(c.delta for c in smollm2.chat(msgs, max_tokens=12, temperature=0, stream=True))
            else:
                results[i] = smollm2.chat(msgs, max_tokens=12, temperature=0).text
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results == expected


def test_breaking_out_of_a_stream_stops_and_model_stays_usable(smollm2) -> None:
    expected = smollm2.chat(Q, max_tokens=16, temperature=0).text
    n = 0
    for _chunk in smollm2.chat([{"role": "user", "content": "Tell me a long story."}], max_tokens=200, stream=True):
        n += 1
        if n == 3:
            break
    assert smollm2.chat(Q, max_tokens=16, temperature=0).text == expected
    # An open stream kept in a variable does not deadlock the same thread either.
    s = smollm2.chat([{"role": "user", "content": "Tell me a long story."}], max_tokens=200, stream=True)
    next(s)
    assert smollm2.chat(Q, max_tokens=16, temperature=0).text == expected
    with pytest.raises(StopIteration):
        next(s)


def test_close_with_an_open_stream_of_the_same_thread(smollm2_path) -> None:
    m = edgeslm.load(str(smollm2_path), n_ctx=512)
    s = m.chat(Q, max_tokens=50, stream=True)
    next(s)
    done = threading.Event()
    threading.Thread(target=lambda: (m.close(), done.set()), daemon=True).start()
    assert not done.wait(0.5)  # another thread waits for the stream to end...
    s.close()
    assert done.wait(30) and m.closed
    m = edgeslm.load(str(smollm2_path), n_ctx=512)
    s = m.chat(Q, max_tokens=50, stream=True)
    next(s)
    m.close()  # ...the thread that owns the stream closes it instead of deadlocking on itself
    assert m.closed
    with pytest.raises(StopIteration):
        next(s)


def test_close_and_context_manager(smollm2_path) -> None:
    with edgeslm.load(str(smollm2_path), n_ctx=512) as m:
        assert m.generate("Hi", max_tokens=2).usage.completion_tokens >= 1
    assert m.closed
    with pytest.raises(edgeslm.ModelClosedError):
        m.chat(Q)
    m.close()  # idempotent


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(edgeslm.ModelNotFoundError):
        edgeslm.load("/nonexistent/model.gguf")


def test_cancel_on_stops_a_call_from_another_thread_and_the_model_goes_on(smollm2) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(edgeslm.GenerationCancelled), edgeslm.cancel_on(stop):
        smollm2.chat([{"role": "user", "content": "Write a very long story about the sea."}], max_tokens=2000,
                     temperature=0)
    assert time.perf_counter() - t0 < 5  # 2000 tokens take far longer here
    assert isinstance(edgeslm.GenerationCancelled("x"), edgeslm.GenerationError)
    with edgeslm.cancel_on(stop):  # already set: nothing starts
        with pytest.raises(edgeslm.GenerationCancelled):
            smollm2.extract("Ana is 31.", {"type": "object", "properties": {"age": {"type": "integer"}}})
    # outside the block the model works as before
    r = smollm2.chat([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
    assert r.usage.completion_tokens >= 1
