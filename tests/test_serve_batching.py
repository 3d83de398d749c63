"""Concurrent ``response_format`` requests decoded together (issue #23): ``AsyncModel.call_batched``
in process on the bundled SmolLM2, and a real ``edgeslm serve --batch-size`` process driven by the
official async ``openai`` client."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}
TEXTS = ["Maria Lopez, aged 31, moved to Lisbon.", "Tom is 45 and lives in Oslo.",
         "Ana, 22, studies in Porto.", "Ken (60) retired to Kyoto.", "Li Wei is 38.", "Omar, 27, in Cairo."]


def _extract(text: str, schema: dict) -> object:
    def job(m: object) -> object:
        return m.extract(text, schema, max_tokens=48)  # type: ignore[attr-defined]
    return job


def test_call_batched_decodes_concurrent_calls_together(smollm2) -> None:
    import edgeslm

    async def main() -> tuple[list[object], dict[str, int], list[object]]:
        am = edgeslm.AsyncModel(smollm2)
        # two schemas in one batch: each sequence has its own grammar
        jobs = [am.call_batched(_extract(t, PERSON if i % 2 == 0 else CITY), batch_size=4)
                for i, t in enumerate(TEXTS)]
        got = await asyncio.gather(*jobs)
        one = [await am.extract(t, PERSON if i % 2 == 0 else CITY, max_tokens=48) for i, t in enumerate(TEXTS)]
        return got, am.batch_stats, one

    got, stats, one = asyncio.run(main())
    for i, x in enumerate(got):
        assert isinstance(x, edgeslm.Extraction), x
        jsonschema.validate(x.data, PERSON if i % 2 == 0 else CITY)
    assert stats["calls"] == len(TEXTS)
    assert stats["most_at_once"] >= 2, stats  # they shared the engine's batch
    assert stats["batches"] <= 2, stats  # not one turn per call
    # the same answers as one at a time, where the model does not hesitate (batch numerics differ slightly)
    same = sum(a.data == b.data for a, b in zip(got, one, strict=True))  # type: ignore[attr-defined]
    assert same >= len(TEXTS) - 2, (same, [a.data for a in got], [b.data for b in one])  # type: ignore[attr-defined]


def test_call_batched_errors_stay_with_their_call_and_turns_stay_fair(smollm2) -> None:
    import edgeslm

    async def main() -> None:
        am = edgeslm.AsyncModel(smollm2)
        finished: list[str] = []

        def bad(m: object) -> object:
            raise ValueError("this job is broken")

        async def batched(tag: str, fn: object) -> object:
            try:
                return await am.call_batched(fn, batch_size=3)  # type: ignore[arg-type]
            finally:
                finished.append(tag)

        async def chat() -> object:
            await asyncio.sleep(0.05)  # arrives while the batch runs
            r = await am.chat([{"role": "user", "content": "hi"}], max_tokens=2, temperature=0)
            finished.append("chat")
            return r

        async def late(i: int) -> object:  # keeps arriving after the chat call waits: not ahead of it
            await asyncio.sleep(0.2 + 0.05 * i)
            return await batched(f"late{i}", _extract(TEXTS[i], PERSON))

        results = await asyncio.gather(batched("a", _extract(TEXTS[0], PERSON)), batched("bad", bad),
                                       batched("b", _extract(TEXTS[1], PERSON)), chat(),
                                       *(late(i) for i in range(3)), return_exceptions=True)
        assert isinstance(results[1], ValueError) and "broken" in str(results[1])
        for r in (results[0], results[2], *results[4:]):
            assert isinstance(r, edgeslm.Extraction), r
        assert finished.index("chat") < max(finished.index(f"late{i}") for i in range(3)), finished

    asyncio.run(main())


def test_call_batched_on_a_closed_model_settles_every_call(smollm2_path: Path) -> None:
    import edgeslm

    async def main() -> list[object]:
        am = await edgeslm.AsyncModel.load(str(smollm2_path), n_ctx=1024)
        calls = [asyncio.ensure_future(am.call_batched(_extract(t, PERSON), batch_size=2)) for t in TEXTS[:4]]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(am.model.close)  # closes while the batch runs
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)

    t = time.monotonic()
    results = asyncio.run(main())
    assert time.monotonic() - t < 60
    assert len(results) == 4
    for r in results:
        assert isinstance(r, (edgeslm.Extraction, edgeslm.ModelClosedError)), r


def test_serve_batches_concurrent_schema_requests(smollm2_path: Path, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx2")
    from .test_serve import Server

    s = Server([str(smollm2_path), "--port", "0", "--n-ctx", "1024", "--batch-size", "4"],
               tmp_path / "server.log").wait_ready()
    try:
        assert "decoded together: up to 4" in s.output()

        async def main() -> list[object]:
            client = openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0, timeout=120)
            model = (await client.models.list()).data[0].id
            rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}

            async def one(text: str) -> object:
                return await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": text}], response_format=rf,
                    max_tokens=48, temperature=0)

            async def chat() -> object:
                return await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)

            try:
                return await asyncio.gather(*(one(t) for t in TEXTS), chat())
            finally:
                await client.close()

        replies = asyncio.run(main())
        for r in replies[:-1]:
            jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)  # type: ignore[attr-defined]
            assert r.model_extra.get("field_confidence") is not None  # type: ignore[attr-defined]
        assert replies[-1].choices[0].message.content is not None  # type: ignore[attr-defined]
        stats = httpx.get(f"{s.url}/health", timeout=10).json()["batches"]
        assert stats["calls"] == len(TEXTS) and stats["most_at_once"] >= 2, stats
    finally:
        assert s.stop() == 0, s.output()


def test_serve_batching_config_is_checked(tmp_path: Path) -> None:
    import edgeslm
    from edgeslm.server.config import load_config

    cfg = tmp_path / "s.toml"
    cfg.write_text("[batching]\nbatch_size = 8\n")
    assert load_config(cfg).batch_size == 8
    for bad in ("batch_size = 0", "batch_size = 'x'", "size = 4"):
        cfg.write_text(f"[batching]\n{bad}\n")
        with pytest.raises(edgeslm.EdgeSLMError, match="batching"):
            load_config(cfg)
