"""Several sequences in one llama.cpp context: a shared prompt prefix, one batch per step."""

from __future__ import annotations

import numpy as np
import pytest

import edgeslm
from edgeslm.backends.base import Backend

from .conftest import requires_smollm2

PREFIX = "<|im_start|>system\nSay which city the text names.<|im_end|>\n<|im_start|>user\n"
TEXTS = ["I live in Paris.", "Maria moved to Lisbon last year.", "Our office is in Berlin."]
TAIL = "<|im_end|>\n<|im_start|>assistant\n"


def _safe_extra_bufts(path) -> bool:
    """The CPU extra-buffer option the engine self-check found safe here (AMX CPUs need it off)."""
    from edgeslm.backends.llamacpp import system_info
    from edgeslm.runtime import selfcheck
    from edgeslm.runtime.hardware import cpu_info

    check = selfcheck.ensure_engine(path, selfcheck.EngineOptions(0, True), cpu_features=cpu_info()[1],
                                    system_info=system_info())
    return bool(check.chosen and check.chosen.extra_bufts)


@pytest.fixture(scope="module")
def engines(smollm2_path):
    from edgeslm.backends.llamacpp import LlamaCppBackend

    extra = _safe_extra_bufts(smollm2_path)
    single = LlamaCppBackend(smollm2_path, n_ctx=1024, extra_bufts=extra)
    multi = LlamaCppBackend(smollm2_path, n_ctx=2048, extra_bufts=extra, n_seq_max=4)
    yield single, multi
    single.close()
    multi.close()


def _prompt(engine: Backend, text: str) -> tuple[list[int], list[int]]:
    return engine.tokenize(PREFIX, special=True), engine.tokenize(text, special=False) + engine.tokenize(
        TAIL, special=True)


@requires_smollm2
def test_shared_prefix_and_one_batch_per_step_match_one_sequence_at_a_time(engines) -> None:
    single, multi = engines
    assert multi.max_sequences == 4 and single.max_sequences == 1
    pre, _ = _prompt(multi, "")
    multi.eval_many([(0, pre)])
    for s in range(1, len(TEXTS)):
        multi.seq_copy(0, s, len(pre))
        assert multi.seq_tokens(s) == pre  # shared, not evaluated again
    multi.eval_many([(s, _prompt(multi, t)[1]) for s, t in enumerate(TEXTS)])
    for s, text in enumerate(TEXTS):
        single.trim(0)
        a, b = _prompt(single, text)
        single.eval(a + b)
        ref = single.logits().copy()
        got = multi.logits_of(s)
        assert multi.seq_tokens(s) == a + b
        assert int(np.argmax(got)) == int(np.argmax(ref))
        assert float(np.max(np.abs(got - ref))) < 0.05 * float(np.max(np.abs(ref)))
    # one more step for every sequence in one call, then trimming one leaves the others alone
    step = [(s, [int(np.argmax(multi.logits_of(s)))]) for s in range(len(TEXTS))]
    multi.eval_many(step)
    lengths = [len(multi.seq_tokens(s)) for s in range(len(TEXTS))]
    multi.seq_trim(1, len(pre))
    assert multi.seq_tokens(1) == pre and [len(multi.seq_tokens(s)) for s in (0, 2)] == [lengths[0], lengths[2]]
    with pytest.raises(edgeslm.GenerationError):
        multi.seq_tokens(7)


@requires_smollm2
def test_one_sequence_backends_say_so(engines) -> None:
    single, _ = engines
    with pytest.raises(edgeslm.GenerationError, match="n_seq_max"):
        single.seq_copy(0, 1, 3)
    assert single.seq_tokens(0) is single.tokens


@requires_smollm2
def test_eval_rows_gives_the_logits_of_each_position_of_one_call(engines) -> None:
    single, _ = engines
    head, tail = _prompt(single, TEXTS[1])
    toks = head + tail
    single.trim(0)
    rows = single.eval_rows(toks, 4)
    assert rows.shape == (4, single.n_vocab) and single.tokens == toks
    assert np.array_equal(rows[-1], single.logits())  # logits() is for the last token, as after eval()
    for k in range(3):  # each row: the logits after that prefix, as a call of several tokens gives them
        single.trim(0)
        single.eval(toks[: len(toks) - 3 + k])
        assert np.allclose(rows[k], single.logits(), atol=1e-3), k
    single.trim(len(toks) - 2)  # rejected drafts are dropped from the cache like any tokens
    assert single.tokens == toks[:-2]
    long = (toks * (single.n_batch // len(toks) + 2))[: single.n_batch + 20]
    with pytest.raises(edgeslm.GenerationError, match="rows"):  # more rows than one call holds
        single.eval_rows(long, single.n_batch + 1)
    with pytest.raises(edgeslm.GenerationError, match="KV cache overflow"):  # refused before any is evaluated
        single.eval_rows(long * 2, 2)
    assert single.tokens == toks[:-2]
    assert single.eval_rows(long, 3).shape == (3, single.n_vocab)  # the head first, the rows in one call
    assert single.tokens == toks[:-2] + long
    assert not Backend.verifies and single.verifies
    with pytest.raises(NotImplementedError):
        Backend.eval_rows(single, toks, 1)


@pytest.fixture(scope="module")
def invariant(smollm2_path):
    from edgeslm.backends.llamacpp import LlamaCppBackend

    single = LlamaCppBackend(smollm2_path, n_ctx=1024, batch_invariant=True)
    multi = single.fork(4, 4096)
    yield single, multi
    single.close()


@requires_smollm2
def test_batch_invariant_logits_do_not_depend_on_the_call_or_the_cache_layout(invariant) -> None:
    """With batch_invariant, a sequence's logits are bit-identical whether its tokens come in one
    call or several, alone or beside other sequences, first in the cache or after others."""
    single, multi = invariant
    text = single.tokenize("Alice Smith works at Acme Corp in Paris; her e-mail is alice@acme.com.", special=False)
    other = single.tokenize("Bob is a plumber from Oslo who likes fishing.", special=False)

    def greedy(run_step, first_logits, n=8) -> list[np.ndarray]:
        out, logits = [], first_logits()
        for _ in range(n):
            out.append(logits.copy())
            logits = run_step(int(np.argmax(logits)))
        return out

    def single_step(tok: int) -> np.ndarray:
        single.eval([tok])  # one token: padded to a call of two
        return single.logits()

    single.trim(0)
    single.eval(text)
    ref = greedy(single_step, single.logits)
    for split in (3, 11, len(text) - 2):  # the prompt in two calls
        single.trim(0)
        single.eval(text[:split])
        single.eval(text[split:])
        assert np.array_equal(single.logits(), ref[0]), split
    for layout in ("alone", "beside", "after"):
        for s in range(4):
            multi.seq_trim(s, 0)
        if layout == "alone":
            multi.eval_many([(1, text)])
        elif layout == "beside":
            multi.eval_many([(0, other), (1, text), (2, other[:5])])
        else:
            multi.eval_many([(0, other)])
            multi.eval_many([(2, other[:5])])
            multi.eval_many([(1, text)])

        def step(tok: int, layout=layout) -> np.ndarray:
            rnd = [(1, [tok])] if layout == "alone" else [(0, [7]), (1, [tok]), (3, [9, 9])]
            multi.eval_many(rnd)
            return multi.logits_of(1)

        got = greedy(step, lambda: multi.logits_of(1))
        assert all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True)), layout
    # a prefix copied from another sequence (its cache copied whole, then cut) gives the same too
    multi.seq_copy(1, 2, len(text) - 4)
    assert multi.seq_tokens(2) == text[:-4]
    multi.eval_many([(2, text[-4:])])
    assert np.array_equal(multi.logits_of(2), ref[0])


@requires_smollm2
def test_batch_invariant_is_for_the_cpu(smollm2_path) -> None:
    from edgeslm.backends.llamacpp import LlamaCppBackend

    with pytest.raises(edgeslm.InvalidRequestError, match="CPU"):
        LlamaCppBackend(smollm2_path, n_ctx=256, n_gpu_layers=4, batch_invariant=True)
