"""Fuzz over GGUF metadata values: a model file with hostile numbers never takes the process down.

Each case copies the bundled SmolLM2, overwrites one integer metadata value in place (the file
stays well-formed GGUF), and loads it as an untrusted file: the load must end in a working model
or an ``EdgeSLMError`` (``CorruptModelError`` when llama.cpp dies in the self-check's child).
Bounded and seeded; each case has a time limit through the self-check's child timeout.
"""

from __future__ import annotations

import random
import struct

import edgeslm

from .conftest import requires_smollm2

KEYS = (b"llama.block_count", b"llama.context_length", b"llama.embedding_length", b"llama.feed_forward_length",
        b"llama.attention.head_count", b"llama.attention.head_count_kv", b"llama.rope.dimension_count",
        b"llama.vocab_size", b"tokenizer.ggml.bos_token_id", b"tokenizer.ggml.eos_token_id")
VALUES = (0, 1, 2, 3, 7, 513, 4096, 65535, 100_000, 2**31 - 1, 2**32 - 1)
CASES = 10


def _u32_offset(data: bytes, key: bytes) -> int | None:
    """Where the u32 value of *key* starts, or None when the key is absent or not a u32."""
    i = data.find(struct.pack("<Q", len(key)) + key)
    if i < 0:
        return None
    i += 8 + len(key)
    return i + 4 if struct.unpack_from("<I", data, i)[0] in (4, 5) else None  # u32 / i32


@requires_smollm2
def test_hostile_metadata_values_end_in_a_model_or_an_edgeslm_error(smollm2_path, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGESLM_SELFCHECK_TIMEOUT", "60")
    original = smollm2_path.read_bytes()
    rng = random.Random(20261128)
    cases = [(b"llama.block_count", 513)]  # known to abort llama.cpp (GGML_ASSERT n_layer <= 512)
    while len(cases) < CASES:
        key, value = rng.choice(KEYS), rng.choice(VALUES)
        if _u32_offset(original, key) is not None and (key, value) not in cases:
            cases.append((key, value))
    outcomes = []
    for n, (key, value) in enumerate(cases):
        data = bytearray(original)
        struct.pack_into("<I", data, _u32_offset(original, key), value)
        path = tmp_path / f"case{n}.gguf"
        path.write_bytes(bytes(data))
        try:
            with edgeslm.load(path, n_ctx=256) as m:
                m.generate("Hello", max_tokens=2, temperature=0)
            outcomes.append("ok")
        except edgeslm.EdgeSLMError as exc:
            assert str(exc).strip() and exc.hint, (key, value, exc)
            outcomes.append(type(exc).__name__)
        path.unlink()
    print(dict(zip([f"{k.decode()}={v}" for k, v in cases], outcomes, strict=True)))
    assert len(outcomes) == CASES and outcomes[0] == "CorruptModelError"  # the process survived every case
