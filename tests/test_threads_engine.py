"""The decode thread count adapts to the load in the real llama.cpp without changing a greedy answer."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import edgeslm

from .conftest import requires_smollm2

PROMPT = "Write a long story about a lighthouse keeper who finds"


@requires_smollm2
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: nothing to adapt")
def test_switching_threads_mid_generation_keeps_the_greedy_answer() -> None:
    with edgeslm.load("smollm2-135m", n_ctx=512, n_threads=2) as fixed:
        assert fixed._engine._tuner is None  # a count the app chose stays
        want = fixed.generate(PROMPT, max_tokens=96, temperature=0).text
    with edgeslm.load("smollm2-135m", n_ctx=512) as m:
        tuner = m._engine._tuner
        assert tuner is not None and tuner.max_threads == os.cpu_count()
        # force switches at every few steps, whatever the machine's load: the answer must not move
        real = tuner.observe
        calls = [0]

        def flip(seconds: float) -> int | None:
            calls[0] += 1
            real(seconds)
            return 1 + calls[0] % 2 if calls[0] % 3 == 0 else None

        tuner.observe = flip  # type: ignore[method-assign]
        r = m.generate(PROMPT, max_tokens=96, temperature=0)
        assert r.text == want
        # a decode step observed per engine call (drafted tokens share a call; the greedy text may end
        # before 96 tokens on another CPU: 48 steps on an AMD EPYC without AMX): switches happened
        assert calls[0] >= min(30, r.usage.completion_tokens // 2) and calls[0] >= 12
        tuner.observe = real  # type: ignore[method-assign]
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.2)
            assert m.generate(PROMPT, max_tokens=96, temperature=0).text == want  # and under a real load
        finally:
            burner.kill()
            burner.wait()
        assert 1 <= tuner.n <= tuner.max_threads
    os.environ["EDGESLM_ADAPTIVE_THREADS"] = "0"
    try:
        with edgeslm.load("smollm2-135m", n_ctx=256) as off:
            assert off._engine._tuner is None
    finally:
        del os.environ["EDGESLM_ADAPTIVE_THREADS"]
