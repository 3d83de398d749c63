"""extract_many with several sequences decoding together in one llama.cpp context (real SmolLM2)."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

import edgeslm
from edgeslm.api import batch
from edgeslm.runtime import batching

from .conftest import requires_smollm2

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
}
NAMES = ["Alice", "Bob", "Carla", "Dmitri", "Eve", "Farid", "Gina", "Hiro", "Ines", "Jack", "Kemal", "Lena"]
CITIES = ["Paris", "Oslo", "Lima", "Kyoto", "Cairo", "Quito", "Riga", "Turin"]
TEXTS = [f"{n} is {20 + 3 * i} years old and lives in {CITIES[i % 8]}." for i, n in enumerate(NAMES)]
#: Where greedy decoding may take the other token in a batch: the engine rounds a batch of several
#: sequences differently, so only a choice the model nearly tied on (top-two probabilities closer
#: than this somewhere in the output) can come out differently.
NEAR_TIE = 0.1


def _batch_threads() -> list[str]:
    """Threads of extract_many still alive (other tests may leave threads of their own, such as an
    escalation's timed-out worker, which end on their own time)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("edgeslm-batch")]


@requires_smollm2
def test_batched_results_are_those_of_extract_one_by_one(smollm2) -> None:
    one = [smollm2.extract(t, SCHEMA) for t in TEXTS]
    got = smollm2.extract_many(TEXTS, SCHEMA, batch_size=4)
    assert _batch_threads() == []  # workers and the engine thread are gone
    assert len(got) == len(TEXTS)
    same = 0
    for text, a, b in zip(TEXTS, one, got, strict=True):
        assert isinstance(b, edgeslm.Extraction), b
        assert set(b.data) == {"name", "age", "city"} and 0 < b.confidence <= 1
        assert b.usage.completion_tokens > 0 and b.attempts >= 1
        if a.data["name"] in text:  # each sequence reads its own document, not a neighbour's
            assert b.data["name"] in text
        if a.data == b.data:
            same += 1
        else:
            assert a.scores["min_margin"] < NEAR_TIE, (a.data, b.data, a.scores)
    assert same >= len(TEXTS) * 3 // 4


@requires_smollm2
def test_batch_invariant_results_are_exactly_those_of_extract_one_by_one(smollm2_path, tmp_path) -> None:
    """With batch_invariant=True greedy extract_many gives, token for token, what extract gives one
    document at a time: items decode beside each other, copy a shared prefix, draft nothing; the
    one-by-one extractions draft copied text."""
    m = edgeslm.load(smollm2_path, n_ctx=1024, batch_invariant=True)
    try:
        assert m._engine.batch_invariant and any("batch_invariant" in w for w in m.plan.why)
        extra = [f"Contact: {n}, {30 + i} y/o, based in {CITIES[-1 - i % 8]}." for i, n in enumerate(NAMES[:4])]
        texts = TEXTS[:8] + extra
        one = [m.extract(t, SCHEMA) for t in texts]
        got = m.extract_many(texts, SCHEMA, batch_size=4)
        assert [b.raw for b in got] == [a.raw for a in one]
        assert [b.data for b in got] == [a.data for a in one]
        assert [b.confidence for b in got] == [a.confidence for a in one]
    finally:
        m.close()
    # the same from the command line, four documents decoding together
    import json
    import subprocess
    import sys

    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    run = subprocess.run(
        [sys.executable, "-m", "edgeslm", "extract", "-m", str(smollm2_path), "--n-ctx", "1024", "-s", str(schema),
         "--jsonl", "--batch-invariant", "--batch-size", "4", "-"],
        input="".join(json.dumps({"text": t}) + "\n" for t in texts[:6]), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = sorted((json.loads(x) for x in run.stdout.splitlines()), key=lambda x: x["index"])
    assert [x["data"] for x in lines] == [a.data for a in one[:6]]


@requires_smollm2
def test_one_bad_item_in_a_batch_is_an_error_in_its_slot(smollm2) -> None:
    texts = [TEXTS[0], "word " * 3000, TEXTS[1], 7, TEXTS[2]]
    got = smollm2.extract_many(texts, SCHEMA, batch_size=3)
    assert [type(r).__name__ for r in got] == ["Extraction", "ContextLengthError", "Extraction",
                                               "InvalidRequestError", "Extraction"]
    assert got[0].data["name"] == "Alice" and got[4].data["name"] == "Carla"


@requires_smollm2
def test_leaving_extract_iter_early_releases_the_model(smollm2) -> None:
    it = smollm2.extract_iter(iter(TEXTS), SCHEMA, batch_size=4)
    first = next(it)
    assert first[0] in range(len(TEXTS)) and isinstance(first[1], edgeslm.Extraction)
    assert len(_batch_threads()) == 5  # 4 workers and the engine thread
    it.close()  # the workers drop the items they hold, then the context is freed
    assert _batch_threads() == []
    assert smollm2.extract(TEXTS[0], SCHEMA).data["name"] == "Alice"  # the lock was given back


@requires_smollm2
def test_peak_memory_stays_within_the_kv_cache_planned_for_the_batch(smollm2) -> None:
    engine = smollm2._engine
    n = 8
    planned = batching.planned_bytes(engine, n, smollm2.n_ctx)
    assert planned > engine.kv_bytes_per_token() * n * smollm2.n_ctx > 0
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    w = threading.Thread(target=watch)
    w.start()
    try:
        got = smollm2.extract_many(TEXTS[:8], SCHEMA, batch_size=n)
    finally:
        done.set()
        w.join()
    assert all(isinstance(r, edgeslm.Extraction) for r in got)
    # the KV cache of the batch, plus llama.cpp's compute buffers for a batch (at most 64 MiB here)
    print(f"peak RSS growth {(peak[0] - base) / 2**20:.0f} MiB, planned KV {planned / 2**20:.0f} MiB")
    assert peak[0] - base <= planned + 64 * 2**20, (peak[0] - base, planned)


@requires_smollm2
def test_automatic_batch_size_follows_memory_and_measured_gain(smollm2) -> None:
    engine = smollm2._engine
    per_seq = engine.kv_bytes_per_token() * smollm2.n_ctx
    fixed = batching.planned_bytes(engine, 0, smollm2.n_ctx)  # the compute buffer
    assert batching.auto_batch_size(engine, smollm2.n_ctx, available_bytes=per_seq) == 1  # only a quarter of it
    assert batching.auto_batch_size(engine, smollm2.n_ctx, available_bytes=(per_seq * 3 + fixed) * 4) == 3
    assert batching.auto_batch_size(engine, smollm2.n_ctx, available_bytes=2**40) == batching.MAX_AUTO_BATCH
    gain = batching.decode_gain(engine, 4)
    assert engine._forks == []  # the probe's context is freed
    assert batching.decode_gain(engine, 4) == gain  # measured once per model
    assert 0.5 < gain < 4.5  # 4 tokens in one step: never more than 4x, and not slower than one by one
    assert batching.best_batch_size(engine, 4) == (4, gain)  # at most the cap; the measurement is reused
    assert batching.best_batch_size(engine, 1) == (1, 1.0)
    # 4 items: batched at 4 exactly when the measured gain pays; an explicit size is kept (up to the items)
    assert batching.chosen_batch_size(engine, smollm2.n_ctx, total=4) == (4 if gain >= batching.MIN_DECODE_GAIN else 1)
    assert batching.chosen_batch_size(engine, smollm2.n_ctx, batch_size=6, total=4) == 4
    assert batching.chosen_batch_size(engine, smollm2.n_ctx, batch_size=6) == 6
    # batch_size=None runs, batched or not as the measurement says, and returns every item in order
    got = smollm2.extract_many(TEXTS[:3], SCHEMA)
    assert len(got) == 3 and got[0].data["name"] == "Alice"


@requires_smollm2
def test_a_batch_the_engine_cannot_allocate_is_halved_when_automatic_and_an_error_when_asked(
        smollm2, monkeypatch) -> None:
    """A context of N sequences that llama.cpp cannot create (a GPU without room for N KV caches):
    with batch_size=None the batch is asked again with half the sequences, and runs one at a time
    once not even 2 fit; a batch_size the caller chose is an InsufficientMemoryError that says
    what to do. Nothing is lost either way, and the model is free after."""
    engine = smollm2._engine
    real_fork = engine.fork
    asked: list[int] = []
    fits = [2]

    def fork(n_seq: int, n_ctx: int):
        asked.append(n_seq)
        if n_seq > fits[0]:
            raise edgeslm.BackendUnavailableError(f"llama.cpp could not create a context of {n_ctx} tokens",
                                                  hint="lower n_ctx=")
        return real_fork(n_seq, n_ctx)

    monkeypatch.setattr(engine, "fork", fork)
    # what a roomier machine would choose: 4 sequences, and batching predicted to pay after the first
    # two items (measured one at a time); the other two are then asked of a batch of 4
    monkeypatch.setattr(batch, "probe_pays", lambda *a, **k: True)
    monkeypatch.setattr(batch, "auto_plan", lambda *a, **k: (4, 10.0, 0.01))
    monkeypatch.setattr(batch, "predicted_gain", lambda *a, **k: 2.0)
    texts = TEXTS[:5]
    one = [smollm2.extract(t, SCHEMA) for t in texts]
    got = smollm2.extract_many(texts, SCHEMA)
    assert asked == [4, 2] and _batch_threads() == []
    for text, b in zip(texts, got, strict=True):
        assert isinstance(b, edgeslm.Extraction) and b.data["name"] in text
    fits[0], asked[:] = 1, []
    got = smollm2.extract_many(texts, SCHEMA)
    assert asked == [4, 2]
    assert [x.raw for x in got] == [x.raw for x in one]  # one at a time: extract's own results
    with pytest.raises(edgeslm.InsufficientMemoryError, match="batch_size") as err:
        smollm2.extract_many(texts, SCHEMA, batch_size=4)
    assert "4 sequences" in str(err.value) and asked[-1] == 4
    assert smollm2.extract(texts[0], SCHEMA).raw == one[0].raw  # not left held


def test_kv_memory_is_the_ram_and_on_a_cuda_gpu_no_more_than_its_free_memory() -> None:
    from edgeslm.runtime.hardware import GPU

    gib = 2**30
    two = (GPU("A", "cuda", 8 * gib, 3 * gib), GPU("B", "cuda", 8 * gib, 2 * gib))
    assert batching.kv_memory(20 * gib, two) == 5 * gib  # caches of offloaded layers live on the GPUs
    assert batching.kv_memory(20 * gib) == 20 * gib  # a model on the CPU
    assert batching.kv_memory(20 * gib, (GPU("A", "cuda", 80 * gib, 70 * gib),)) == 20 * gib  # RAM is less
    assert batching.kv_memory(20 * gib, (GPU("A", "cuda", 8 * gib, 0),)) == 20 * gib  # free memory unknown
    assert batching.kv_memory(20 * gib, (GPU("M", "metal", 24 * gib, 20 * gib),)) == 20 * gib  # unified memory


@requires_smollm2
def test_batch_size_is_checked(smollm2) -> None:
    with pytest.raises(edgeslm.InvalidRequestError, match="batch_size"):
        smollm2.extract_many(TEXTS, SCHEMA, batch_size=0)


@requires_smollm2
def test_cli_reads_json_lines_lazily_and_decodes_them_together(tmp_path) -> None:
    import json
    import subprocess
    import sys

    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    lines = [json.dumps({"text": t}) for t in TEXTS[:3]] + ["not json", json.dumps(TEXTS[3])]
    run = subprocess.run(
        [sys.executable, "-m", "edgeslm", "extract", "-m", "smollm2-135m", "--n-ctx", "1024", "-s",
         str(tmp_path / "s.json"), "--jsonl", "--batch-size", "2", "-"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300,
    )
    out = sorted((json.loads(x) for x in run.stdout.splitlines()), key=lambda x: x["index"])
    assert [x["input"] for x in out] == [f"stdin:{n}" for n in range(1, 6)], run.stderr
    assert run.returncode == 1 and out[3]["error"]["type"] == "InvalidRequestError"  # the line that is not JSON
    for x, text in zip([out[0], out[1], out[2], out[4]], TEXTS[:4], strict=True):
        assert set(x["data"]) == {"name", "age", "city"} and x["data"]["name"] in text
    bad = subprocess.run(
        [sys.executable, "-m", "edgeslm", "extract", "-s", str(tmp_path / "s.json"), "--jsonl", "--batch-size", "0",
         "-"], input=lines[0] + "\n", capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and "batch_size" in bad.stderr


@requires_smollm2
def test_bench_batch_section_reports_ratio_and_bound(smollm2) -> None:
    from edgeslm.bench.batch import _token_counts, batch_bench, batch_documents, engine_rates

    engine = smollm2._engine
    prompt_rate, step_rate = engine_rates(engine, 4, per_seq=16)
    assert engine._forks == [] and prompt_rate > 0 and step_rate > 0
    one = [smollm2.extract(t, SCHEMA) for t in TEXTS[:2]]
    prompt, chosen = _token_counts([*one, edgeslm.ExtractionFailed("x", hint="y")])  # an error counts nothing
    u = [x.usage for x in one]
    assert chosen == sum(x.completion_tokens - x.forced_tokens for x in u) > 0
    assert prompt == sum(x.prompt_tokens - x.reused_prompt_tokens + x.forced_tokens for x in u) > 0
    schema, docs = batch_documents(3, "contacts")  # cycled: 3 rows of the labeled task
    r = batch_bench("smollm2-135m", schema, docs, peer=False, batch_size=2, max_tokens=96, invariant_docs=1)
    assert r["documents"] == 3 and r["batch_size"] == 2 and "peer" not in r
    for k in ("one_at_a_time", "extract_many"):
        assert r[k]["items"] == 3 and r[k]["valid"] == 3 and r[k]["valid_per_s"] > 0
    # one at a time costs at least what its tokens cost at the engine's best rates: the bound is >= ~1
    assert 0.8 < r["bound"] < 50 and r["tokens"]["chosen"] > 0
    assert 0 <= r["greedy_same"] <= 3 and r["decode_gain"] > 0 and r["auto_batch_size"] >= 1
    inv = r["invariant"]  # batch_invariant on the same documents: the same results both ways
    assert inv["documents"] == 1 and inv["greedy_same"] == 1 and inv["cost_one_at_a_time"] > 0 and inv["ratio"] > 0


def _drain(it) -> tuple[list, BaseException | None]:
    """The results an iterator still gives, and the error it ends with (``None``: it ended)."""
    got = []
    try:
        for x in it:
            got.append(x)
    except edgeslm.EdgeSLMError as exc:
        return got, exc
    return got, None


@requires_smollm2
@pytest.mark.timeout(180)
def test_another_call_on_the_thread_of_an_unfinished_batch_stops_it_instead_of_deadlocking(smollm2) -> None:
    """Issue #24: next(it) on a batched extract_iter, then extract() on the same thread, blocked forever
    (the suspended iterator held the model). The call now runs; the iterator gives the items that
    had finished and then says why it stopped."""
    it = smollm2.extract_iter(iter(TEXTS), SCHEMA, batch_size=4)
    first = next(it)
    assert smollm2.extract(TEXTS[0], SCHEMA).data["name"] == "Alice"
    assert _batch_threads() == []
    rest, err = _drain(it)
    assert isinstance(err, edgeslm.InvalidRequestError) and "another call" in str(err) and err.hint
    seen = [first[0]] + [i for i, _ in rest]
    assert len(set(seen)) == len(seen) < len(TEXTS)  # no duplicates; not silently "complete"
    assert all(isinstance(r, edgeslm.Extraction) and r.data["name"] in TEXTS[i] for i, r in [first, *rest])
    assert smollm2.extract_many(TEXTS[:2], SCHEMA, batch_size=2)[1].data["name"] == "Bob"  # model usable


@requires_smollm2
@pytest.mark.timeout(180)
def test_close_stops_running_batches_from_any_thread_without_deadlock(smollm2_path) -> None:
    """Issue #24: close() on the thread whose batch iterator is open deadlocked; close() from another
    thread during extract_many waited for the whole batch (47-63 s). Both now stop the batch within
    an engine round; the iterator's owner gets the finished items and then ModelClosedError."""
    # 1. the same thread
    m = edgeslm.load(str(smollm2_path), n_ctx=512)
    it = m.extract_iter(iter(TEXTS * 4), SCHEMA, batch_size=4)
    next(it)
    t = time.monotonic()
    m.close()
    assert m.closed and _batch_threads() == []
    same_thread_s = time.monotonic() - t
    rest, err = _drain(it)
    assert isinstance(err, edgeslm.ModelClosedError) and len(rest) < len(TEXTS) * 4 - 1

    # 2. another thread, while the owner is suspended between two next() calls
    m = edgeslm.load(str(smollm2_path), n_ctx=512)
    it = m.extract_iter(iter(TEXTS * 4), SCHEMA, batch_size=4)
    next(it)
    closer = threading.Thread(target=m.close)
    t = time.monotonic()
    closer.start()
    closer.join(30)
    suspended_s = time.monotonic() - t
    assert not closer.is_alive() and m.closed and _batch_threads() == []
    rest, err = _drain(it)
    assert isinstance(err, edgeslm.ModelClosedError)
    assert all(isinstance(r, edgeslm.Extraction) for _, r in rest)

    # 3. another thread, while extract_many runs
    m = edgeslm.load(str(smollm2_path), n_ctx=512)
    box: dict = {}

    def run() -> None:
        try:
            box["out"] = m.extract_many(TEXTS * 4, SCHEMA, batch_size=4)
        except BaseException as exc:
            box["err"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    while len(_batch_threads()) < 5 and runner.is_alive():
        time.sleep(0.05)
    time.sleep(0.5)  # mid-batch
    t = time.monotonic()
    m.close()
    running_s = time.monotonic() - t
    runner.join(30)
    assert not runner.is_alive() and isinstance(box.get("err"), edgeslm.ModelClosedError)
    assert _batch_threads() == []
    # An engine round of this model takes well under a second; the bound leaves room for a busy machine.
    assert max(same_thread_s, suspended_s, running_s) < 5, (same_thread_s, suspended_s, running_s)
    print(f"close() took {same_thread_s:.2f} / {suspended_s:.2f} / {running_s:.2f} s")


@requires_smollm2
def test_a_huge_batch_size_is_capped_and_refused_with_true_figures_before_the_engine_is_asked(
        smollm2, monkeypatch) -> None:
    """Issue #24: batch_size=10**9 over a generator quoted "2,896,166,912 tokens" (n_seq * n_ctx wrapped
    around 32 bits in llama.cpp). The size is capped at llama.cpp's sequence limit, and a batch whose
    KV caches cannot fit is refused with the real figures before a context is asked for."""
    engine = smollm2._engine
    asked: list[int] = []
    monkeypatch.setattr(engine, "fork", lambda n, ctx: asked.append(n))
    monkeypatch.setattr(batching, "_available", lambda e: 2**30)
    with pytest.raises(edgeslm.InsufficientMemoryError) as err:
        list(smollm2.extract_iter((t for t in TEXTS), SCHEMA, batch_size=10**9))
    need = batching.planned_bytes(engine, batching.MAX_SEQUENCES, smollm2.n_ctx)
    assert f"{batching.MAX_SEQUENCES} sequences of {smollm2.n_ctx:,} tokens" in str(err.value)
    assert f"{need / 2**30:,.2f} GiB" in str(err.value) and "1.00 GiB" in str(err.value)
    assert str(err.value).count("Hint:") == 1 and asked == []
    assert smollm2.extract(TEXTS[0], SCHEMA).data["name"] == "Alice"  # not left held


@requires_smollm2
@pytest.mark.parametrize("pays", [True, False])
def test_automatic_batching_is_decided_on_the_first_items_measured(smollm2, monkeypatch, pays: bool) -> None:
    """batch_size=None: the first two items run one at a time, the second's real timings go into
    the prediction, and the rest are batched only where it says batching pays; every item comes
    back, in its own slot, either way."""
    engine = smollm2._engine
    forks: list[int] = []
    real_fork = engine.fork
    monkeypatch.setattr(engine, "fork", lambda n, c: (forks.append(n), real_fork(n, c))[1])
    monkeypatch.setattr(batch, "probe_pays", lambda *a, **k: True)  # (its own test is below)
    # a probe that found a gain (capped by the items, as the real one is)
    monkeypatch.setattr(batch, "auto_plan", lambda engine, n_ctx, total: (min(4, total or 4), 3.0, 0.01))
    seen: list[object] = []
    monkeypatch.setattr(batch, "predicted_gain", lambda u, *a, **k: (seen.append(u), 2.0 if pays else 1.0)[1])
    texts = TEXTS[:7]
    got = smollm2.extract_many(texts, SCHEMA)
    assert len(seen) == 1 and seen[0].total_time_s > 0 and seen[0].decode_tokens_per_s > 0  # measured
    assert forks == ([4] if pays else [])
    for text, x in zip(texts, got, strict=True):
        assert isinstance(x, edgeslm.Extraction) and x.data["name"] in text
    assert _batch_threads() == []
    # too few items to measure and batch: one at a time, no probe either
    forks.clear()
    smollm2.extract_many(texts[:3], SCHEMA)
    assert forks == []


@requires_smollm2
def test_the_probe_runs_only_where_it_can_pay_for_itself(smollm2, monkeypatch) -> None:
    """The decode probe costs about a second on 2 cores: it is not run for a handful of quick items,
    and it is where the items left could repay it (the real probe, then its own figures kept)."""
    from types import SimpleNamespace

    engine = smollm2._engine
    quick = SimpleNamespace(total_time_s=0.05, time_to_first_token_s=0.04, prompt_tokens=200,
                            reused_prompt_tokens=150, decode_tokens_per_s=100.0)
    slow = SimpleNamespace(total_time_s=5.0, time_to_first_token_s=0.5, prompt_tokens=200,
                           reused_prompt_tokens=150, decode_tokens_per_s=30.0)
    batching._STEPS.pop(engine.vocab_owner, None)
    assert not batching.probe_pays(quick, 4, smollm2.n_ctx, engine)
    assert not batching.probe_pays(slow, 1, smollm2.n_ctx, engine)  # one item left: no batch at all
    assert batching.probe_pays(slow, 4, smollm2.n_ctx, engine)
    assert batching.probe_pays(quick, None, smollm2.n_ctx, engine)  # an open-ended stream
    assert batching.probe_sizes(32) == [8, 16, 32] and batching.probe_sizes(12) == [8, 12]
    assert batching.probe_sizes(4) == [4] and batching.probe_sizes(1) == []
    batching.best_batch_size(engine, 4)  # measured once: from now on free
    assert batching.probe_pays(quick, 4, smollm2.n_ctx, engine)


@requires_smollm2
def test_a_batch_measured_slower_than_one_at_a_time_hands_the_rest_back(smollm2, monkeypatch) -> None:
    """The guard behind batch_size=None: once the first wave of a batch is done, a batch slower per
    item than the item measured one at a time takes no more items; the rest run one at a time, every
    item comes back once, and no batch thread is left."""
    mine: list[str] = []
    real = type(smollm2)._extract

    def extract(self, text, *a, **k):
        if self is smollm2:
            mine.append(text)
        return real(self, text, *a, **k)

    monkeypatch.setattr(type(smollm2), "_extract", extract)
    texts = TEXTS[:8]
    got = dict(batch._batched(smollm2, iter(enumerate(texts)), SCHEMA, 2, {}, auto=True, one_s=1e-9))
    assert sorted(got) == list(range(8))
    for i, x in got.items():
        assert isinstance(x, edgeslm.Extraction) and x.data["name"] in texts[i]
    assert 4 <= len(mine) <= 6, mine  # the first wave (and what a worker took meanwhile) was batched
    assert _batch_threads() == []
    mine.clear()  # a batch faster than one at a time keeps every item
    got = dict(batch._batched(smollm2, iter(enumerate(texts)), SCHEMA, 2, {}, auto=True, one_s=1e9))
    assert sorted(got) == list(range(8)) and mine == []


@pytest.mark.parametrize("size", [1, 2])
def test_the_schema_is_prepared_once_per_call(smollm2, monkeypatch, size: int) -> None:
    """extract_many checks, compiles and wraps the schema once, not once per document (#25)."""
    from edgeslm.api import extract as ex

    calls: list[object] = []
    real = ex.prepare_schema
    monkeypatch.setattr(ex, "prepare_schema", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    out = smollm2.extract_many(TEXTS[:4], SCHEMA, batch_size=size)
    assert all(isinstance(x, edgeslm.Extraction) for x in out)
    assert len(calls) == 1
