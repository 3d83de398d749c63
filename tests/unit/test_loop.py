"""The decoding loop without a real model: prefill and KV-cache reuse, the token budget, forced
tokens, processors, stop strings and the sampler, on the scripted backend (tests/fakes.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

import edgeslm
from edgeslm.decoding.loop import GenStats, generate_steps, partial_stop_len, prefill, stream_text
from edgeslm.decoding.sampling import Sampler, SamplingParams, retry_params, token_scores
from tests.fakes import ScriptedBackend

MARK = "<|im_start|>assistant\n"


def _engine(reply: str = "Hello there, friend.", n_ctx: int = 4096) -> ScriptedBackend:
    return ScriptedBackend(reply, marker=MARK, n_ctx=n_ctx)


def _prompt(engine: ScriptedBackend, user: str = "hi") -> list[int]:
    return engine.tokenize(f"<|im_start|>user\n{user}<|im_end|>\n{MARK}", special=True)


def _text(engine: ScriptedBackend, steps: Sequence) -> str:  # type: ignore[type-arg]
    return b"".join(s.piece for s in steps).decode()


# ----------------------------------------------------------------------------- prefill


class Counting(ScriptedBackend):
    """Records every eval batch."""

    def __init__(self, *a, **k) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **k)
        self.batches: list[int] = []

    def eval(self, tokens: Sequence[int]) -> None:
        self.batches.append(len(tokens))
        super().eval(tokens)


def test_prefill_reuses_the_common_prefix_and_evaluates_the_last_token_alone() -> None:
    e = Counting("x", marker=MARK)
    p = _prompt(e, "first question")
    assert prefill(e, p) == 0
    assert e.batches == [len(p) - 1, 1]  # the last prompt token on its own
    assert e.tokens == p
    e.batches.clear()
    q = _prompt(e, "first question, longer")
    reused = prefill(e, q)
    common = next(i for i, (a, b) in enumerate(zip(p, q, strict=False)) if a != b)
    assert reused == common and e.tokens == q
    assert sum(e.batches) == len(q) - common and e.batches[-1] == 1
    e.batches.clear()
    assert prefill(e, q) == len(q) - 1  # the same prompt again: only the last token is evaluated
    assert e.batches == [1]


def test_prefill_never_leaves_a_lone_token_before_the_last() -> None:
    e = Counting("x", marker=MARK)
    p = _prompt(e, "abc")
    prefill(e, p)
    e.batches.clear()
    q = [*p[:-1], e.vocab.encode_plain(b"Z")[0], p[-1]]  # two new tokens at the end
    prefill(e, q)
    assert all(b >= 2 for b in e.batches[:-1]) and e.batches[-1] == 1


# ----------------------------------------------------------------------------- the loop


def test_generation_follows_the_script_and_stops_at_end_of_generation() -> None:
    e = _engine("Hello there, friend.")
    stats = GenStats()
    steps = list(generate_steps(e, _prompt(e), Sampler(SamplingParams()), 100, stats=stats))
    assert _text(e, steps) == "Hello there, friend."
    assert stats.completion_tokens == len(steps) and not stats.hit_limit
    assert stats.prompt_tokens == len(_prompt(e)) and stats.first_token_at is not None


def test_max_tokens_and_the_context_window_bound_the_output() -> None:
    e = _engine("Hello there, friend.")
    stats = GenStats()
    steps = list(generate_steps(e, _prompt(e), Sampler(SamplingParams()), 3, stats=stats))
    assert len(steps) == 3 and stats.hit_limit
    p = _prompt(e)
    small = _engine("Hello there, friend.", n_ctx=len(p) + 2)
    steps = list(generate_steps(small, p, Sampler(SamplingParams()), 100))
    assert len(steps) == 2  # the window ends first


def test_a_prompt_that_fills_the_context_is_a_clear_error() -> None:
    e = _engine(n_ctx=8)
    with pytest.raises(edgeslm.ContextLengthError) as ei:
        list(generate_steps(e, list(range(300, 308)), Sampler(SamplingParams()), 4))
    assert ei.value.n_ctx == 8 and ei.value.n_prompt == 8 and "n_ctx" in ei.value.hint
    with pytest.raises(edgeslm.InvalidRequestError):
        list(generate_steps(e, [], Sampler(SamplingParams()), 4))


class _Forcing:
    """A constraint that forces its tokens, one model choice between each run of them."""

    def __init__(self, plan: list[list[int]]) -> None:
        self.plan = plan
        self.n_allowed: int | None = None
        self.consumed: list[int] = []

    def mask(self, logits: np.ndarray) -> None:
        pass

    def consume(self, token: int) -> None:
        self.consumed.append(token)

    def forced(self) -> list[int]:
        return self.plan.pop(0) if self.plan else []

    def done(self) -> bool:
        return False

    def accepting(self) -> bool:
        return True


def test_forced_tokens_are_yielded_as_forced_and_evaluated_in_one_batch_with_the_choice() -> None:
    e = Counting("abHcde", marker=MARK)
    p = _prompt(e)
    a, b, c = e.vocab.encode_plain(b"abc")
    con = _Forcing([[a, b], [c]])
    stats = GenStats()
    steps = list(generate_steps(e, p, Sampler(SamplingParams()), 6, constraint=con, stats=stats))
    assert [s.token for s in steps[:2]] == [a, b] and all(s.forced for s in steps[:2])
    assert not steps[2].forced and steps[3].token == c and steps[3].forced
    assert stats.forced_tokens == 3
    assert 2 in e.batches  # the model's choice and the forced token after it: one eval


def test_processors_see_the_output_so_far_and_change_the_choice() -> None:
    e = _engine("Hello")
    seen: list[list[int]] = []
    z = e.vocab.encode_plain(b"Z")[0]

    def prefer_z(tokens: Sequence[int], logits: np.ndarray) -> None:
        seen.append(list(tokens))
        logits[z] += 100.0

    steps = list(generate_steps(e, _prompt(e), Sampler(SamplingParams()), 3, processors=[prefer_z]))
    assert [s.token for s in steps] == [z, z, z]
    assert seen == [[], [z], [z, z]]


def test_the_only_allowed_token_counts_as_forced_and_carries_no_logprob() -> None:
    e = _engine("Hello")
    h = e.vocab.encode_plain(b"H")[0]

    class One(_Forcing):
        def mask(self, logits: np.ndarray) -> None:
            keep = logits[h]
            logits[:] = -np.inf
            logits[h] = keep
            self.n_allowed = 1

    stats = GenStats()
    steps = list(generate_steps(e, _prompt(e), Sampler(SamplingParams()), 2, constraint=One([]), logprobs=True,
                                stats=stats))
    assert all(s.forced and s.logprob is None for s in steps) and stats.forced_tokens == 2
    free = list(generate_steps(e, _prompt(e), Sampler(SamplingParams()), 2, logprobs=True))
    assert all(s.logprob is not None and s.logprob <= 0 for s in free)


# ----------------------------------------------------------------------------- stop strings


def _steps_of(*pieces: bytes):  # type: ignore[no-untyped-def]
    from edgeslm.decoding.loop import Step

    return iter([Step(i, p, None, False) for i, p in enumerate(pieces)])


def test_stop_strings_cut_the_text_even_across_tokens_and_hold_back_only_what_may_stop() -> None:
    deltas = list(stream_text(_steps_of(b"Hello", b" wor", b"ld<", b"|e", b"nd|> more"), ["<|end|>"]))
    assert "".join(d.text for d in deltas) == "Hello world"
    assert deltas[-1].finish_reason == "stop"
    assert [d.text for d in deltas if d.text][:2] == ["Hello", " wor"]  # shown at once: cannot start a stop
    deltas = list(stream_text(_steps_of(b"a<", b"b"), ["<|end|>"]))
    assert "".join(d.text for d in deltas) == "a<b" and deltas[-1].finish_reason == "stop"


def test_a_character_split_across_tokens_is_decoded_whole() -> None:
    snow = "☃".encode()
    deltas = list(stream_text(_steps_of(snow[:1], snow[1:2], snow[2:] + b"!")))
    assert "".join(d.text for d in deltas) == "☃!" and all("\ufffd" not in d.text for d in deltas)


def test_finish_reason_is_length_when_the_budget_ends_it() -> None:
    stats = GenStats(hit_limit=True)
    assert list(stream_text(_steps_of(b"abc"), [], stats))[-1].finish_reason == "length"


def test_partial_stop_len() -> None:
    assert partial_stop_len("abc<|e", ["<|end|>"]) == 3
    assert partial_stop_len("abc", ["<|end|>"]) == 0
    assert partial_stop_len("ab\n\n", ["\n\nUser:", "\n"]) == 2


# ----------------------------------------------------------------------------- the sampler


def test_greedy_takes_the_argmax_and_sampling_is_reproducible_with_a_seed() -> None:
    logits = np.log(np.array([0.1, 0.5, 0.3, 0.1], dtype=np.float32))
    assert Sampler(SamplingParams()).choose(logits.copy()) == 1
    a = [Sampler(SamplingParams(temperature=1.0, seed=7)).choose(logits.copy()) for _ in range(3)]
    s1, s2 = Sampler(SamplingParams(temperature=1.0, seed=7)), Sampler(SamplingParams(temperature=1.0, seed=7))
    assert [s1.choose(logits.copy()) for _ in range(50)] == [s2.choose(logits.copy()) for _ in range(50)]
    assert len(set(a)) == 1


def test_top_k_and_top_p_keep_only_the_likely_tokens() -> None:
    logits = np.log(np.array([0.05, 0.6, 0.3, 0.05], dtype=np.float32))
    s = Sampler(SamplingParams(temperature=5.0, top_k=2, top_p=1.0, seed=1))
    assert {s.choose(logits.copy()) for _ in range(200)} == {1, 2}
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.5, seed=1))
    assert {s.choose(logits.copy()) for _ in range(200)} == {1}


def test_masked_tokens_are_never_sampled() -> None:
    logits = np.zeros(50, dtype=np.float32)
    logits[:48] = -np.inf
    s = Sampler(SamplingParams(temperature=2.0, top_k=0, top_p=1.0, seed=3))
    assert {s.choose(logits.copy()) for _ in range(200)} <= {48, 49}


def test_retries_sample_with_seeds_derived_from_the_call() -> None:
    greedy = SamplingParams()
    r1, r2 = retry_params(greedy, 1), retry_params(greedy, 2)
    assert r1.temperature >= 0.7 and r1.seed == 1 and r2.seed == 2  # a greedy call stays reproducible
    assert retry_params(SamplingParams(temperature=0.2, seed=10), 3).seed == 13


# ----------------------------------------------------------------------------- drafted tokens


class Verifying(Counting):
    """A scripted backend that gives the logits of several positions from one call (``eval_rows``)."""

    verifies = True

    def eval_rows(self, tokens: Sequence[int], n_rows: int) -> np.ndarray:
        self.batches.append(len(tokens))
        ScriptedBackend.eval(self, tokens)
        full = list(self._tokens)
        rows = []
        for r in range(n_rows):
            self._tokens[:] = full[: len(full) - n_rows + 1 + r]
            rows.append(self.logits())
        self._tokens[:] = full
        return np.stack(rows)


class _Valid(_Forcing):
    """A constraint that forces nothing (or its plan) and accepts the first *ok* drafted tokens."""

    def __init__(self, plan: list[list[int]] | None = None, ok: int = 10**6) -> None:
        super().__init__(plan or [])
        self.ok = ok
        self.asked: list[list[int]] = []

    def validate(self, tokens: Sequence[int]) -> int:
        self.asked.append(list(tokens))
        return min(self.ok, len(tokens))


class _Fixed:
    """A drafter that always proposes the same tokens."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.seen: list[tuple[int, int]] = []

    def propose(self, generated: bytes) -> list[int]:
        return list(self.tokens)

    def observe(self, proposed: int, kept: int) -> None:
        self.seen.append((proposed, kept))


REPLY = "Name: Laura Mendes, mail laura@brightwave.io."
DOC = b"Please reach Laura Mendes, mail laura@brightwave.io. Thanks!"


def _run(e: ScriptedBackend, budget: int = 100, **kw):  # type: ignore[no-untyped-def]
    stats = GenStats()
    steps = list(generate_steps(e, _prompt(e), Sampler(SamplingParams()), budget, stats=stats, **kw))
    return steps, stats


def _cache_is_consistent(e: ScriptedBackend, steps: Sequence) -> None:  # type: ignore[type-arg]
    p = _prompt(e)
    held = e.tokens[len(p):]
    assert e.tokens[: len(p)] == p and held == [s.token for s in steps][: len(held)]


def test_drafted_tokens_the_model_would_choose_are_kept_and_save_engine_calls() -> None:
    from edgeslm.decoding.loop import PromptLookup

    plain = Counting(REPLY, marker=MARK)
    want, _ = _run(plain, constraint=_Valid())
    e = Verifying(REPLY, marker=MARK)
    lookup = PromptLookup(DOC, lambda t: e.tokenize(t, special=False))
    got, stats = _run(e, constraint=_Valid(), draft=lookup)
    assert _text(e, got) == _text(plain, want) == REPLY
    assert [(s.token, s.forced) for s in got] == [(s.token, s.forced) for s in want]
    assert stats.completion_tokens == len(want)
    assert len(e.batches) < len(plain.batches) - 10  # the copied name and address came in whole calls
    assert lookup.kept > 10 and lookup.kept <= lookup.proposed
    _cache_is_consistent(e, got)


def test_drafts_the_model_rejects_change_nothing_and_leave_the_cache_right() -> None:
    plain = Counting(REPLY, marker=MARK)
    want, _ = _run(plain, constraint=_Valid())
    e = Verifying(REPLY, marker=MARK)
    wrong = _Fixed(e.vocab.encode_plain(b"QQ"))
    got, _ = _run(e, constraint=_Valid(), draft=wrong)
    assert [s.token for s in got] == [s.token for s in want]
    assert wrong.seen and all(kept == 0 for _, kept in wrong.seen)
    _cache_is_consistent(e, got)
    # sampling is never drafted: only greedy choices can be checked this way
    e2 = Verifying(REPLY, marker=MARK)
    n = len(wrong.seen)
    sampler = Sampler(SamplingParams(temperature=0.7, seed=1))
    list(generate_steps(e2, _prompt(e2), sampler, 100, constraint=_Valid(), draft=wrong))
    assert len(wrong.seen) == n and all(b == 1 for b in e2.batches[2:])  # one token per call


def test_drafts_stop_where_the_grammar_refuses_and_at_the_budget_and_forced_tokens_still_come() -> None:
    e = Verifying(REPLY, marker=MARK)
    good = _Fixed(e.vocab.encode_plain(b"Name: Laura")[1:])  # the script after its first token
    con = _Valid(ok=1)
    got, _ = _run(e, constraint=con, draft=good)
    assert _text(e, got) == REPLY and all(len(a) >= 1 for a in con.asked)
    assert all(p <= 1 for p, _ in good.seen)  # cut to what the grammar accepts
    e3 = Verifying(REPLY, marker=MARK)
    lookup_tokens = e3.vocab.encode_plain(b"ame: Laura Mendes")
    got, stats = _run(e3, budget=5, constraint=_Valid(), draft=_Fixed(lookup_tokens))
    assert len(got) == 5 and stats.hit_limit and _text(e3, got) == REPLY[:5]
    # forced runs between choices: the same tokens, forced ones marked, with or without drafts
    n_, a_, m_ = e.vocab.encode_plain(b"Nam")
    plain = Counting(REPLY, marker=MARK)
    want, _ = _run(plain, constraint=_Valid([[n_], [a_, m_], [], [], []]))
    e4 = Verifying(REPLY, marker=MARK)
    from edgeslm.decoding.loop import PromptLookup

    got, _ = _run(e4, constraint=_Valid([[n_], [a_, m_], [], [], []]),
                  draft=PromptLookup(DOC, lambda t: e4.tokenize(t, special=False)))
    assert [(s.token, s.forced) for s in got] == [(s.token, s.forced) for s in want]
    _cache_is_consistent(e4, got)


def test_prompt_lookup_proposes_what_follows_the_longest_match_and_adapts() -> None:
    from edgeslm.decoding.loop import PromptLookup

    words = {"Mendes": [1], ",": [2], " mail": [3], " laura": [4], "@": [5]}

    def tok(text: str) -> list[int]:
        out = []
        for w in text.replace(",", " , ").split(" "):
            out.extend(words.get(w, [9]) if w else [])
        return out

    lk = PromptLookup(b"x Laura Mendes, mail laura@b", tok, max_tokens=8)
    assert lk.propose(b"La") == []  # shorter than min_match
    assert lk.propose(b"zzz") == []  # not in the source
    assert lk.length == 2 and lk.propose(b'"Laura ') == [1, 2]
    lk.observe(2, 2)
    assert lk.length == 4
    lk.observe(4, 1)
    assert lk.length == 1
    lk.observe(20, 0)  # patience spent with few kept: no more drafts
    assert lk.propose(b'"Laura ') == []


def test_token_scores_are_the_softmax_logprob_and_top_two_margin_over_allowed_tokens() -> None:
    """Against a float64 softmax over the finite logits only, on masked vectors of both bundled
    vocabulary sizes, the top token at either end, a tie, and a single allowed token."""
    import math

    rng = np.random.default_rng(7)

    def reference(logits: np.ndarray, token: int) -> tuple[float, float]:
        finite = np.sort(logits[np.isfinite(logits)].astype(np.float64))[::-1]
        p = np.exp(finite - finite[0])
        p /= p.sum()
        return float(logits[token]) - finite[0] - math.log(np.exp(finite - finite[0]).sum()), \
            float(p[0] - (p[1] if p.size > 1 else 0.0))

    cases = []
    for n in (49152, 262144):
        for keep in (0.9, 0.01):
            x = (rng.standard_normal(n) * 3).astype(np.float32)
            x[rng.random(n) > keep] = -np.inf
            cases.append(x)
    first, last = cases[0].copy(), cases[1].copy()
    first[0], last[-1] = 40.0, 40.0  # the top token at either end of the vocabulary
    tie = np.full(1000, -np.inf, dtype=np.float32)
    tie[[3, 9]] = 2.0
    one = np.full(1000, -np.inf, dtype=np.float32)
    one[500] = -3.0
    for x in [*cases, first, last, tie, one]:
        finite = np.flatnonzero(np.isfinite(x))
        for token in (int(np.argmax(x)), int(finite[len(finite) // 2])):
            lp, margin = token_scores(x, token)
            ref_lp, ref_margin = reference(x, token)
            assert lp == pytest.approx(ref_lp, abs=1e-4) and margin == pytest.approx(ref_margin, abs=1e-5)
    assert token_scores(tie, 3) == pytest.approx((math.log(0.5), 0.0))
    assert token_scores(one, 500) == (0.0, 1.0)
