"""The planner: quantization, device and GPU layers for the memory at hand, and why."""

from __future__ import annotations

import edgeslm
from edgeslm.runtime.hardware import GPU, Hardware

G = 1 << 30


def machine(ram_free: float, gpu_free: float | None = None, offload: bool | None = None) -> Hardware:
    gpus = (GPU("Test GPU", "cuda", int(max(gpu_free or 0, 1) * G), int((gpu_free or 0) * G)),) if gpu_free else ()
    return Hardware("Linux", "x86_64", 8, ("avx2",), int(ram_free * G) * 2, int(ram_free * G), gpus,
                    cuda=bool(gpus), llama_gpu_offload=offload if offload is not None else bool(gpus))


def test_big_gpu_gets_the_best_quant_fully_offloaded() -> None:
    p = edgeslm.plan("llama-3.1-8b", hardware=machine(48, gpu_free=79))
    assert p.variant == "llama-3.1-8b:Q8_0" and p.device == "cuda" and p.n_gpu_layers > 0
    assert any("GPU memory" in w for w in p.why)


def test_small_gpu_gets_a_smaller_quant_that_fits() -> None:
    p = edgeslm.plan("llama-3.1-8b", hardware=machine(48, gpu_free=6))
    assert p.device == "cuda" and p.variant != "llama-3.1-8b:Q8_0"
    assert p.est_memory_bytes <= 6 * G


def test_cpu_prefers_q4_and_says_why() -> None:
    p = edgeslm.plan("llama-3.1-8b", hardware=machine(12))
    assert p.variant == "llama-3.1-8b:Q4_K_M" and p.device == "cpu" and p.n_gpu_layers == 0
    assert any("memory bandwidth" in w for w in p.why)


def test_nothing_fits_takes_the_smallest_and_warns() -> None:
    p = edgeslm.plan("llama-3.1-8b", hardware=machine(2))
    assert any("does not fit" in w for w in p.why) and "expect swapping" in p.why[-1]


def test_gpu_without_an_offload_build_explains_the_rebuild() -> None:
    p = edgeslm.plan("llama-3.1-8b", hardware=machine(48, gpu_free=79, offload=False))
    assert p.device == "cpu" and p.n_gpu_layers == 0
    assert any("GGML_CUDA=on" in w for w in p.why)


def test_this_machine_and_a_local_file(smollm2_path) -> None:
    hw = edgeslm.detect()
    assert hw.cpu_count >= 1 and hw.ram_total >= hw.ram_available > 0
    p = edgeslm.plan(str(smollm2_path))
    assert p.backend == "llama.cpp" and p.n_ctx > 0 and p.why
