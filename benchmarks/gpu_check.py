"""Prepared device check (issue 9): on a machine with an NVIDIA GPU and a CUDA build of
llama-cpp-python, run `doctor`, `plan` and a GPU-offloaded load and decode of the bundled model,
and report decode tokens/s on the GPU against the CPU in the same run.

    CMAKE_ARGS="-DGGML_CUDA=on" pip install --no-cache-dir llama-cpp-python && pip install -e ".[tiny]"
    python benchmarks/gpu_check.py --out gpu-check.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import edgeslm

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def decode_rate(device: str, reps: int, n_tokens: int) -> dict:
    with edgeslm.load("smollm2-135m", device=device, n_ctx=2048) as m:
        rates = []
        for _ in range(reps):
            m.generate("x", max_tokens=1)  # drop the cached prompt so every rep starts cold
            r = m.chat(PROMPT, max_tokens=n_tokens, temperature=0)
            rates.append(r.usage.decode_tokens_per_s)
        return {"device": m.device, "gpu_layers": m.plan.n_gpu_layers, "plan": str(m.plan),
                "decode_tokens_per_s": statistics.median(rates), "reps": rates}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    doctor = subprocess.run([sys.executable, "-m", "edgeslm", "doctor", "--check", "--json"],
                            capture_output=True, text=True)
    out = {
        "doctor": json.loads(doctor.stdout.split("\n", 1)[1]) if doctor.returncode == 0 else doctor.stderr[-2000:],
        "plan_phi4_mini": str(edgeslm.plan("phi-4-mini", prefer_cached=False)),
        "cpu": decode_rate("cpu", a.reps, a.tokens),
        "gpu": decode_rate("cuda", a.reps, a.tokens),
    }
    out["gpu_over_cpu"] = out["gpu"]["decode_tokens_per_s"] / out["cpu"]["decode_tokens_per_s"]
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
