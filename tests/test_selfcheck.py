"""The engine self-check: a crash in llama.cpp is met in a child process, never in the app.

Fault injection (``EDGESLM_TEST_CRASH``) makes the child die with SIGSEGV under chosen options;
the real llama.cpp and the real bundled model run in every other respect.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path

import pytest

import edgeslm
from edgeslm.runtime import selfcheck
from edgeslm.runtime.selfcheck import EngineOptions, gpu_fallback, ladder, open_with_gpu_fallback

from .conftest import requires_smollm2

AMX_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | AVX512_VNNI = 1 | "
            "AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache folder: no remembered checks."""
    monkeypatch.setenv("EDGESLM_HOME", str(tmp_path))
    monkeypatch.delenv("EDGESLM_SAFE_MODE", raising=False)
    return tmp_path


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[EngineOptions]:
    """Counts the child processes started (every probe is still a real child)."""
    seen: list[EngineOptions] = []
    real = selfcheck.probe

    def counting(path, options, **kw):  # type: ignore[no-untyped-def]
        seen.append(options)
        return real(path, options, **kw)

    monkeypatch.setattr(selfcheck, "probe", counting)
    return seen


@pytest.fixture
def no_amx_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine reports no AMX kernels, so the ladder tries the requested extra buffers first.

    Without it these tests depend on the machine: on an AMX CPU with an AMX build (CI's machines among
    them) the self-check skips the extra buffers outright, which is what it should do there.
    """
    import edgeslm.backends.llamacpp as llb

    monkeypatch.setattr(llb, "system_info", lambda: AMX_INFO.replace("AMX_INT8 = 1 | ", ""))


# ------------------------------------------------------------------------------ pure logic


def test_ladder_goes_from_the_request_to_the_safest() -> None:
    steps, notes = ladder(EngineOptions(0, True))
    assert steps == [EngineOptions(0, True), EngineOptions(0, False)] and notes == []
    steps, _ = ladder(EngineOptions(999, True))
    assert steps == [EngineOptions(999, True), EngineOptions(999, False), EngineOptions(16, False),
                     EngineOptions(0, False)]
    steps, _ = ladder(EngineOptions(20, True))
    assert steps[-2:] == [EngineOptions(10, False), EngineOptions(0, False)]


def test_a_known_bad_combination_starts_at_the_safe_options() -> None:
    assert selfcheck.amx_known_bad(AMX_INFO, ("avx2", "amx_int8", "amx_tile"))
    assert not selfcheck.amx_known_bad(AMX_INFO, ("avx2", "avx512f"))  # no AMX in the CPU
    assert not selfcheck.amx_known_bad(AMX_INFO.replace("AMX_INT8 = 1 | ", ""), ("amx_int8",))  # no AMX kernels
    steps, notes = ladder(EngineOptions(0, True), skip_extra_bufts="AMX")
    assert steps == [EngineOptions(0, False)] and "not tried: AMX" in notes[0]


def test_out_of_gpu_memory_at_load_retries_with_fewer_layers_then_the_cpu(caplog) -> None:
    assert gpu_fallback(999, 32) == [999, 24, 16, 8, 0]
    assert gpu_fallback(0) == [0]
    tried: list[int] = []

    def open_fn(layers: int) -> str:
        tried.append(layers)
        if layers > 10:
            raise edgeslm.BackendUnavailableError("out of GPU memory")
        return f"engine with {layers}"

    with caplog.at_level(logging.WARNING, logger="edgeslm"):
        engine, layers = open_with_gpu_fallback(open_fn, 999, 32)
    assert (engine, layers, tried) == ("engine with 8", 8, [999, 24, 16, 8])
    assert "loaded with 8 GPU layers" in caplog.text
    tried.clear()
    with pytest.raises(edgeslm.BackendUnavailableError):  # nothing works, not even the CPU: the error stays
        open_with_gpu_fallback(lambda n: (_ for _ in ()).throw(edgeslm.BackendUnavailableError("no")), 4)


# ------------------------------------------------------------------------------ real engine, real children


@requires_smollm2
def test_fallback_chain_is_remembered_and_rechecked_for_a_new_build(home, probes, monkeypatch, caplog,
                                                                    no_amx_kernels) -> None:
    monkeypatch.setenv("EDGESLM_TEST_CRASH", "extra_bufts")  # the child dies with SIGSEGV when they are on
    with caplog.at_level(logging.WARNING, logger="edgeslm"):
        m = edgeslm.load("smollm2-135m", n_ctx=512)
    check = m.plan.engine_check
    assert not check.from_cache and check.chosen == EngineOptions(0, False)
    tried = [(a.options, a.ok) for a in check.attempts]
    assert tried == [(EngineOptions(0, True), False), (EngineOptions(0, False), True)]
    assert check.attempts[0].outcome == "killed by SIGSEGV"
    assert "cpu_extra_buffers=off" in caplog.text and "SIGSEGV" in caplog.text and "EDGESLM_SAFE_MODE" in caplog.text
    assert m._engine.extra_bufts is False  # the app's engine runs with the safe option
    assert m.generate("Monday, Tuesday,", max_tokens=4, temperature=0).text
    m.close()
    assert len(probes) == 2 and list(home.glob("selfcheck/engine-*.json"))

    # The next load reuses the answer: no child at all (one would crash under "always").
    monkeypatch.setenv("EDGESLM_TEST_CRASH", "always")
    with edgeslm.load("smollm2-135m", n_ctx=512) as m2:
        assert m2.plan.engine_check.from_cache and m2.plan.engine_check.chosen == EngineOptions(0, False)
        assert m2._engine.extra_bufts is False
    assert len(probes) == 2

    # A new build (other library files) checks again.
    real = selfcheck.build_identity
    monkeypatch.setattr(selfcheck, "build_identity", lambda: {**real(), "libs": [["libllama.so", 1, 2]]})
    monkeypatch.setenv("EDGESLM_TEST_CRASH", "extra_bufts")
    with edgeslm.load("smollm2-135m", n_ctx=512) as m3:
        assert not m3.plan.engine_check.from_cache
    assert len(probes) == 4


@requires_smollm2
def test_amx_build_on_an_amx_cpu_goes_straight_to_the_safe_options(home, probes, monkeypatch, caplog) -> None:
    import edgeslm.backends.llamacpp as llb
    import edgeslm.runtime.hardware as hwmod

    monkeypatch.setattr(llb, "system_info", lambda: AMX_INFO)
    real_cpu = hwmod.cpu_info
    monkeypatch.setattr(hwmod, "cpu_info", lambda: (real_cpu()[0], (*real_cpu()[1], "amx_int8", "amx_tile")))
    with caplog.at_level(logging.WARNING, logger="edgeslm"), edgeslm.load("smollm2-135m", n_ctx=512) as m:
        check = m.plan.engine_check
        assert probes == [EngineOptions(0, False)]  # the crashing option is never tried
        assert check.chosen == EngineOptions(0, False) and "AMX" in check.notes[0]
        assert m._engine.extra_bufts is False
        assert any("engine self-check" in w for w in m.plan.why)
    assert "llama.cpp #20824" in caplog.text


@requires_smollm2
def test_every_option_crashing_raises_an_error_that_says_what_was_tried(home, monkeypatch, no_amx_kernels) -> None:
    monkeypatch.setenv("EDGESLM_TEST_CRASH", "always")
    with pytest.raises(edgeslm.EngineCrashError) as e:
        edgeslm.load("smollm2-135m", n_ctx=512)
    msg = str(e.value)
    assert "llama-cpp-python" in msg and "CPU:" in msg and "features:" in msg
    assert "cpu_extra_buffers=on -> killed by SIGSEGV" in msg and "cpu_extra_buffers=off -> killed by SIGSEGV" in msg
    assert "edgeslm doctor" in msg and isinstance(e.value, edgeslm.BackendUnavailableError)
    assert not list(home.glob("selfcheck/engine-*.json"))  # a failure is not remembered: fix and retry


@requires_smollm2
def test_a_hanging_child_is_a_failed_option(home, monkeypatch) -> None:
    monkeypatch.setenv("EDGESLM_TEST_CRASH", "hang")
    monkeypatch.setenv("EDGESLM_SELFCHECK_TIMEOUT", "3")
    with pytest.raises(edgeslm.EngineCrashError) as e:
        edgeslm.load("smollm2-135m", n_ctx=512)
    assert "timed out after 3 s" in str(e.value)


@requires_smollm2
def test_safe_mode_off_uses_the_requested_options_without_a_child(home, probes, monkeypatch) -> None:
    monkeypatch.setenv("EDGESLM_TEST_CRASH", "always")
    with edgeslm.load("smollm2-135m", n_ctx=512, safe_mode=False) as m:
        assert m._engine.extra_bufts is True and m.plan.engine_check is None
    monkeypatch.setenv("EDGESLM_SAFE_MODE", "0")
    with edgeslm.load("smollm2-135m", n_ctx=512) as m:
        assert m._engine.extra_bufts is True
    assert probes == []


def _patch_u32(data: bytearray, key: bytes, value: int) -> None:
    """Set a u32 metadata value of a GGUF in place (same size, so the header stays well-formed)."""
    i = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    assert struct.unpack_from("<I", data, i)[0] == 4  # GGUF type u32
    struct.pack_into("<I", data, i + 4, value)


@requires_smollm2
def test_a_model_file_that_kills_llama_cpp_raises_corrupt_model_error(home, smollm2_path, tmp_path, probes) -> None:
    data = bytearray(smollm2_path.read_bytes())
    _patch_u32(data, b"llama.block_count", 513)  # llama.cpp: GGML_ASSERT(n_layer <= LLAMA_MAX_LAYERS), abort
    bad = tmp_path / "hostile.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(edgeslm.CorruptModelError) as e:
        edgeslm.load(bad, n_ctx=512)
    msg = str(e.value)
    assert "crashed llama.cpp in a child process" in msg and "block_count=513" in msg
    assert "the app was not affected" in msg
    # The engine itself was proven with the bundled reference model, and remembered.
    assert list(home.glob("selfcheck/engine-*.json"))


@requires_smollm2
def test_an_untrusted_file_is_checked_once_per_content(home, smollm2_path, tmp_path, probes) -> None:
    copy = tmp_path / "my-model.gguf"
    shutil.copyfile(smollm2_path, copy)
    with edgeslm.load(copy, n_ctx=512):
        pass
    first = len(probes)
    assert first == 1  # the engine check ran with this very file, which proves the file too
    with edgeslm.load(copy, n_ctx=512):
        pass
    other = tmp_path / "other-name.gguf"
    shutil.copyfile(smollm2_path, other)
    with edgeslm.load(other, n_ctx=512):  # same content: no new child
        pass
    assert len(probes) == first


def test_a_frozen_app_without_an_interpreter_applies_the_known_bad_rules_only(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr("sys.frozen", True, raising=False)
    monkeypatch.delenv("EDGESLM_PROBE_PYTHON", raising=False)
    assert selfcheck.probe_python() is None
    attempt = selfcheck.probe(tmp_path / "any.gguf", EngineOptions(0, True))
    assert attempt.ok and "not checked" in attempt.outcome and "EDGESLM_PROBE_PYTHON" in attempt.outcome
    monkeypatch.setenv("EDGESLM_PROBE_PYTHON", "/opt/python/bin/python3")
    assert selfcheck.probe_python() == "/opt/python/bin/python3"


@requires_smollm2
def test_a_choice_made_by_a_timeout_is_checked_again_later(home, probes, no_amx_kernels) -> None:
    """A busy machine at the first check looks like a hang: that choice expires, a crash does not."""
    with edgeslm.load("smollm2-135m", n_ctx=256):
        pass
    n_probes = len(probes)  # 1, or 2 on a CPU where the extra buffers really crash
    assert n_probes >= 1
    record = next((home / "selfcheck").glob("engine-*.json"))
    data = json.loads(record.read_text())
    requested = data["requested"]
    safer = dict(requested, extra_bufts=False)
    # what a check on a machine too busy to answer in time writes: the requested options "timed out"
    data["attempts"] = [{"options": requested, "ok": False, "outcome": "timed out after 300 s", "seconds": 300.0,
                         "detail": ""},
                        {"options": safer, "ok": True, "outcome": "ok", "seconds": 1.0, "detail": ""}]
    data["chosen"] = safer
    record.write_text(json.dumps(data))
    with edgeslm.load("smollm2-135m", n_ctx=256) as m:
        assert m._engine.extra_bufts is False  # remembered while fresh: no new child
    assert len(probes) == n_probes
    data["checked_at"] -= selfcheck.TIMEOUT_MEMORY_S + 1
    record.write_text(json.dumps(data))
    with edgeslm.load("smollm2-135m", n_ctx=256) as m:
        check = m.plan.engine_check
        assert not check.from_cache and check.attempts[0].options.extra_bufts  # checked again, from the request
        # what the fresh check found is what runs (a CPU where the extra buffers crash falls back again)
        assert m._engine.extra_bufts is check.chosen.extra_bufts is check.attempts[0].ok
    assert len(probes) > n_probes
    n_probes = len(probes)
    data = json.loads(record.read_text())
    data["attempts"][0]["outcome"] = "killed by SIGSEGV"  # a crash is remembered for good
    data["chosen"], data["checked_at"] = safer, 0.0
    data["attempts"] = [dict(data["attempts"][0], options=requested, ok=False),
                        {"options": safer, "ok": True, "outcome": "ok", "seconds": 1.0, "detail": ""}]
    record.write_text(json.dumps(data))
    with edgeslm.load("smollm2-135m", n_ctx=256) as m:
        assert m._engine.extra_bufts is False
    assert len(probes) == n_probes
