"""Write a random-weight GGUF of a larger shape, for speed measurements only (batching, threads).

Speed does not depend on the weights' values, and no model above 270M parameters installs from the
package registries here. This takes the bundled SmolLM2-135M's tokenizer, chat template and
architecture (llama) and writes random weights (Q8_0, or ``--quant``) of another shape: by default Qwen2.5-0.5B's
(hidden 896, 24 layers, 14 heads of which 2 for keys/values, FFN 4864; ~0.45B parameters with
SmolLM2's 49k vocabulary, ~480 MB). Its answers are noise; the grammar still makes them valid.

    python benchmarks/random_gguf.py /tmp/random-0.5b.gguf
    python benchmarks/random_gguf.py /tmp/random-1.5b.gguf --hidden 1536 --layers 28 --heads 12 --kv-heads 2 --ffn 8960
    python -m edgeslm.bench --only batch --model /tmp/random-0.5b.gguf --no-peer
    python benchmarks/random_gguf.py /tmp/random-0.5b-f32.gguf --quant F32   # batching gains > 4x
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

SHAPE_KEYS = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count",
              "attention.head_count_kv", "rope.dimension_count")


def write_random(dst: Path, *, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, seed: int = 0,
                 quant: str = "Q8_0") -> Path:
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    from edgeslm.store import resolve

    src = resolve("smollm2-135m").path
    reader = gguf.GGUFReader(src)
    arch = str(reader.fields["general.architecture"].contents())
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key == "general.file_type":
            continue
        if any(key == f"{arch}.{k}" for k in SHAPE_KEYS) or key.startswith("general.name"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    writer.add_name(f"random weights, {layers}x{hidden} (speed measurements only)")
    writer.add_block_count(layers)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    qt = T[quant]
    ftype = "ALL_F32" if quant == "F32" else f"MOSTLY_{quant}"
    writer.add_file_type(getattr(gguf.LlamaFileType, ftype))
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    rng = np.random.default_rng(seed)

    def q8(rows: int, cols: int) -> Any:
        return quants.quantize((rng.standard_normal((rows, cols), dtype=np.float32) * 0.02), qt)

    writer.add_tensor("token_embd.weight", quants.quantize(
        rng.standard_normal((n_vocab, hidden), dtype=np.float32) * 0.02, T.Q8_0), raw_dtype=T.Q8_0)
    ones = np.ones(hidden, dtype=np.float32)
    for i in range(layers):
        b = f"blk.{i}"
        writer.add_tensor(f"{b}.attn_norm.weight", ones)
        writer.add_tensor(f"{b}.attn_q.weight", q8(hidden, hidden), raw_dtype=qt)
        writer.add_tensor(f"{b}.attn_k.weight", q8(kv_heads * head_dim, hidden), raw_dtype=qt)
        writer.add_tensor(f"{b}.attn_v.weight", q8(kv_heads * head_dim, hidden), raw_dtype=qt)
        writer.add_tensor(f"{b}.attn_output.weight", q8(hidden, hidden), raw_dtype=qt)
        writer.add_tensor(f"{b}.ffn_norm.weight", ones)
        writer.add_tensor(f"{b}.ffn_gate.weight", q8(ffn, hidden), raw_dtype=qt)
        writer.add_tensor(f"{b}.ffn_up.weight", q8(ffn, hidden), raw_dtype=qt)
        writer.add_tensor(f"{b}.ffn_down.weight", q8(hidden, ffn), raw_dtype=qt)
    writer.add_tensor("output_norm.weight", ones)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--heads", type=int, default=14)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=4864)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quant", choices=["Q8_0", "Q4_0", "Q4_1", "Q5_0", "F16", "BF16", "F32"], default="Q8_0",
                   help="weight type of the blocks (the embedding stays Q8_0); F32 makes one sequence's decode "
                   "step memory-bound, so batching gains most (0.5B shape: 6.7x at 16 sequences on 2 cores)")
    a = p.parse_args(argv)
    write_random(a.out, hidden=a.hidden, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads, ffn=a.ffn, seed=a.seed,
                 quant=a.quant)
    print(f"{a.out}: {a.out.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
