"""Write a copy of a GGUF model with some vocabulary entries renamed (the ``gguf`` package), so a
test can give a real model the tool-tag tokens of another family (Qwen 2.5's user-defined
``<tool_call>``, Phi-4-mini's control ``<|tool_call|>``) without changing any tensor."""

from __future__ import annotations

from pathlib import Path

#: llama.cpp token types
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


def rename_tokens(src: Path, dst: Path, renames: dict[int, tuple[str, int]]) -> Path:
    """Copy *src* to *dst* with token ``id`` renamed to ``(text, token type)`` for each of *renames*."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        if key == "tokenizer.ggml.tokens":
            value = list(value)
            for i, (text, _) in renames.items():
                value[i] = text
        elif key == "tokenizer.ggml.token_type":
            value = list(value)
            for i, (_, ttype) in renames.items():
                value[i] = ttype
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data)
    writer.close()
    return dst
