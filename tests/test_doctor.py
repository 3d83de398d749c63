"""``edgeslm doctor``: hardware, engines, self-checks and the catalog on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from edgeslm.api.doctor import report
from edgeslm.runtime.hardware import GPU, Hardware

from .conftest import requires_smollm2

G = 1 << 30


def test_report_on_a_gpu_machine_with_a_cpu_build_gives_the_install_line() -> None:
    hw = Hardware("Linux", "x86_64", 16, ("avx2", "amx_int8", "amx_tile"), 64 * G, 60 * G,
                  (GPU("NVIDIA RTX 4090", "cuda", 24 * G, 23 * G, "12.4"),), cuda=True, llama_gpu_offload=False,
                  cpu_model="Intel Xeon w5-3435X")
    rep = report(hw)
    assert rep["hardware"]["amx"] is True and rep["hardware"]["gpus"][0]["cuda_version"] == "12.4"
    assert "GGML_CUDA=on" in rep["gpu_install_hint"] and "whl/cu124" in rep["gpu_install_hint"]
    rows = {(m["model"], m["variant"]): m for m in rep["models"]}
    assert rows[("qwen-2.5-7b", "Q4_K_M")]["runs"] and rows[("qwen-2.5-7b", "Q4_K_M")]["device"] == "cpu"


def test_report_says_which_models_cannot_run_here() -> None:
    hw = Hardware("Linux", "x86_64", 4, ("avx2",), 4 * G, 3 * G, (), llama_gpu_offload=False)
    rows = {(m["model"], m["variant"]): m for m in report(hw)["models"]}
    assert rows[("smollm2-135m", "Q4_1")]["runs"] is True
    assert rows[("llama-3.1-8b", "Q8_0")]["runs"] is False and "GiB RAM" in rows[("llama-3.1-8b", "Q8_0")]["reason"]
    assert rows[("phi-4-mini", "onnx int4 (cuda)")]["runs"] is False
    gpu = Hardware("Linux", "x86_64", 4, ("avx2",), 64 * G, 60 * G, (GPU("H100", "cuda", 80 * G, 79 * G),),
                   cuda=True, llama_gpu_offload=True)
    rows = {(m["model"], m["variant"]): m for m in report(gpu)["models"]}
    assert rows[("llama-3.1-8b", "Q8_0")]["device"] == "cuda" and rows[("llama-3.1-8b", "Q8_0")]["gpu_layers"] == 999


@requires_smollm2
def test_doctor_command_renders_tables_in_a_plain_terminal(tmp_path) -> None:
    env = {**os.environ, "EDGESLM_HOME": str(tmp_path), "TERM": "dumb"}
    out = subprocess.run([sys.executable, "-m", "edgeslm", "doctor", "--check"], capture_output=True, text=True,
                         env=env, timeout=300, check=True).stdout
    for title in ("Hardware", "Engines", "Engine self-checks", "Catalog models on this machine"):
        assert title in out
    assert "engine self-check (checked now" in out and "works with gpu_layers=0" in out
    assert "llama.cpp" in out and "onnxruntime-genai" in out and "\x1b[" not in out  # no colour codes in a pipe
    rep = json.loads(subprocess.run([sys.executable, "-m", "edgeslm", "doctor", "--json"], capture_output=True,
                                    text=True, env=env, timeout=300, check=True).stdout)
    assert rep["selfchecks"] and rep["selfchecks"][0]["current_build"] is True
    assert rep["engines"]["llama.cpp"]["version"] and "CPU" in rep["engines"]["llama.cpp"]["backends"]
    assert rep["hardware"]["ram_total"] >= rep["hardware"]["ram_available"] > 0
