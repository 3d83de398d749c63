"""The planner: quantization, device and GPU layers for the memory at hand, and why.

Recorded hardware profiles (tests/data/hardware_profiles.json) stand for the machines users have;
every plan must fit its memory, use the GPU fully where it can, and refuse what cannot fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgeslm
from edgeslm.runtime.hardware import GPU, Hardware
from edgeslm.runtime.planner import GPU_SHARE, METAL_SHARE, ModelShape, plan_for_path
from edgeslm.store import get_entry

G = 1 << 30
PROFILES = json.loads((Path(__file__).parent / "data" / "hardware_profiles.json").read_text())
MODELS = ("phi-4-mini", "gemma-3-4b", "qwen-2.5-7b")


def profile(name: str) -> Hardware:
    p = PROFILES[name]
    gpus = tuple(GPU(g["name"], g["api"], int(g["memory_total"] * G), int(g["memory_free"] * G), g.get("cuda_version"))
                 for g in p["gpus"])
    return Hardware(p["os"], p["arch"], p["cpu_count"], tuple(p["cpu_features"]), int(p["ram_total"] * G),
                    int(p["ram_available"] * G), gpus, metal=p.get("metal", False), cuda=p.get("cuda", False),
                    llama_gpu_offload=p["llama_gpu_offload"])


def machine(ram_free: float, gpu_free: float | None = None, offload: bool | None = None) -> Hardware:
    gpus = (GPU("Test GPU", "cuda", int(max(gpu_free or 0, 1) * G), int((gpu_free or 0) * G)),) if gpu_free else ()
    return Hardware("Linux", "x86_64", 8, ("avx2",), int(ram_free * G) * 2, int(ram_free * G), gpus,
                    cuda=bool(gpus), llama_gpu_offload=offload if offload is not None else bool(gpus))


def gpu_budget(hw: Hardware) -> float:
    g = hw.gpus[0]
    return min(g.memory_free, g.memory_total * METAL_SHARE) if g.api == "metal" else g.memory_free * GPU_SHARE


@pytest.mark.parametrize("name", sorted(k for k in PROFILES if not k.startswith("_")))
@pytest.mark.parametrize("model", MODELS)
def test_every_plan_fits_its_machine_and_uses_the_gpu_fully_where_it_can(name: str, model: str) -> None:
    hw = profile(name)
    p = edgeslm.plan(model, hardware=hw, prefer_cached=False)
    entry = get_entry(model)
    assert p.est_memory_bytes <= hw.ram_total, p
    if not hw.gpus:
        assert p.device == "cpu" and p.n_gpu_layers == 0 and p.gpu_memory_bytes == 0
        return
    assert p.device == hw.gpus[0].api, p
    assert 0 < p.gpu_memory_bytes <= gpu_budget(hw), p
    # Fully on the GPU whenever some variant fits there entirely; otherwise as many layers as fit.
    variant = entry.variant(quant=p.variant.split(":")[1])
    shape = ModelShape.from_catalog(entry, variant)
    any_full = any(ModelShape.from_catalog(entry, v).gpu_bytes(shape.n_layers + 1, p.n_ctx) <= gpu_budget(hw)
                   for v in entry.variants if v.format == "gguf")
    if any_full:
        assert p.n_gpu_layers == 999, p
    else:
        assert 0 < p.n_gpu_layers <= shape.n_layers, p  # n_layers: every block, the output head on the CPU
        assert shape.gpu_bytes(p.n_gpu_layers + 1, p.n_ctx) > gpu_budget(hw), "one more layer would have fit"


def test_big_gpus_get_the_best_quantization_fully_offloaded() -> None:
    for name in ("rtx4090-24gb", "h100-80gb"):
        for model in MODELS:
            p = edgeslm.plan(model, hardware=profile(name), prefer_cached=False)
            assert p.variant == f"{model}:Q8_0" and p.n_gpu_layers == 999, p
            assert any("all" in w and "layers on" in w for w in p.why)


def test_a_7b_model_on_a_6gb_gpu_is_partially_offloaded_with_real_layer_counts() -> None:
    p = edgeslm.plan("qwen-2.5-7b", hardware=profile("rtx3060-6gb"), prefer_cached=False)
    assert p.variant == "qwen-2.5-7b:Q4_K_M" and p.device == "cuda"
    assert 10 < p.n_gpu_layers <= 28 and p.n_layers == 28, p  # 28 layers in the catalog, not a 32-layer guess
    assert any("partial offload" in w and f"{p.n_gpu_layers}/28" in w for w in p.why)


def test_the_8gb_laptop_runs_the_7b_model_on_the_cpu_and_says_memory_is_tight() -> None:
    p = edgeslm.plan("qwen-2.5-7b", hardware=profile("laptop-8gb-cpu"), prefer_cached=False)
    assert p.variant == "qwen-2.5-7b:Q4_K_M" and p.device == "cpu" and p.n_gpu_layers == 0
    assert any("close other programs" in w for w in p.why)


def test_refuses_a_model_larger_than_the_machine() -> None:
    with pytest.raises(edgeslm.InsufficientMemoryError) as e:
        edgeslm.plan("llama-3.1-8b", hardware=machine(2), prefer_cached=False)
    assert "cannot run here" in str(e.value) and "Hint:" in str(e.value)
    # the same on the 8 GB laptop with a context that needs 16 GiB of KV cache
    with pytest.raises(edgeslm.InsufficientMemoryError):
        edgeslm.plan("llama-3.1-8b", n_ctx=131072, hardware=profile("laptop-8gb-cpu"), prefer_cached=False)


def test_refuses_a_context_beyond_the_trained_length() -> None:
    with pytest.raises(edgeslm.InvalidRequestError) as e:
        edgeslm.plan("phi-4-mini", n_ctx=10_000_000, hardware=profile("h100-80gb"))
    assert "131072" in str(e.value)
    for bad in (0, -5, 1.5):
        with pytest.raises(edgeslm.InvalidRequestError):
            edgeslm.plan("phi-4-mini", n_ctx=bad, hardware=profile("h100-80gb"))  # type: ignore[arg-type]


def test_cpu_prefers_q4_and_says_why() -> None:
    p = edgeslm.plan("llama-3.1-8b", hardware=machine(12), prefer_cached=False)
    assert p.variant == "llama-3.1-8b:Q4_K_M" and p.device == "cpu" and p.n_gpu_layers == 0
    assert any("memory bandwidth" in w for w in p.why)


def test_gpu_without_an_offload_build_gives_the_install_line() -> None:
    hw = profile("rtx3060-6gb")
    hw = Hardware(hw.os, hw.arch, hw.cpu_count, hw.cpu_features, hw.ram_total, hw.ram_available, hw.gpus,
                  cuda=True, llama_gpu_offload=False)
    p = edgeslm.plan("phi-4-mini", hardware=hw, prefer_cached=False)
    assert p.device == "cpu" and p.n_gpu_layers == 0
    line = next(w for w in p.why if "cannot use the GPU" in w)
    assert 'CMAKE_ARGS="-DGGML_CUDA=on"' in line and "whl/cu124" in line and "onnxruntime-genai-cuda" in line
    with pytest.raises(edgeslm.BackendUnavailableError) as e:
        edgeslm.plan("phi-4-mini", hardware=hw, device="cuda")
    assert "GGML_CUDA" in str(e.value)


def test_shape_from_the_gguf_header_uses_real_tensor_sizes(smollm2_path) -> None:
    from edgeslm.backends.gguf_file import gguf_shape, validate_gguf

    info = validate_gguf(smollm2_path)
    shape = gguf_shape(info)
    assert shape is not None and shape.n_layers == 30 and shape.source == "gguf"
    assert shape.weight_bytes == sum(info.tensor_bytes.values())
    assert shape.weight_bytes <= smollm2_path.stat().st_size <= shape.weight_bytes + info.data_offset + 64 * 32
    # SmolLM2-135M: 3 KV heads x 64 dims, K and V in f16, 30 layers
    assert shape.kv_bytes_per_token == 30 * 3 * (64 + 64) * 2
    # A GPU with room for about half the layers gets about half, counted from the real sizes.
    budget = shape.gpu_bytes(15, 2048) + 1
    hw = Hardware("Linux", "x86_64", 8, ("avx2",), 32 * G, 24 * G,
                  (GPU("Small GPU", "cuda", int(budget / GPU_SHARE) + G // 8, int(budget / GPU_SHARE)),),
                  cuda=True, llama_gpu_offload=True)
    p = plan_for_path(smollm2_path, n_ctx=2048, hardware=hw, info=info)
    assert p.device == "cuda" and p.n_gpu_layers == 15 and p.gpu_memory_bytes <= budget


def test_this_machine_and_a_local_file(smollm2_path) -> None:
    hw = edgeslm.detect()
    assert hw.cpu_count >= 1 and hw.ram_total >= hw.ram_available > 0
    p = edgeslm.plan(str(smollm2_path))
    assert p.backend == "llama.cpp" and p.n_ctx > 0 and p.why
    with pytest.raises(edgeslm.InvalidRequestError):
        edgeslm.plan(str(smollm2_path), n_ctx=8193)  # SmolLM2 was trained on 8192 tokens
