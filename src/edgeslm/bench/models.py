"""The bench's ``--model`` values: a model, or a model with a LoRA adapter on it.

    --model smollm2-135m                          the base
    --model smollm2-135m+adapter:./tickets-lora   the same base with the adapter (a PEFT folder or GGUF LoRA)
    --model smollm2-135m+adapter:./lora@0.5       ... at scale 0.5
"""

from __future__ import annotations

from typing import Any

__all__ = ["ADAPTER", "has_adapter", "load_ref", "parse_ref"]

ADAPTER = "+adapter:"


def parse_ref(ref: str) -> tuple[str, str | None, float]:
    """``(base, adapter path or None, scale)`` of a ``--model`` value."""
    base, sep, adapter = ref.partition(ADAPTER)
    if not sep:
        return ref, None, 1.0
    scale = 1.0
    path, at, tail = adapter.rpartition("@")
    if at:
        try:
            scale = float(tail)
            adapter = path
        except ValueError:
            pass  # an "@" that is part of the path
    if not base or not adapter:
        from .._errors import InvalidRequestError

        raise InvalidRequestError(f"--model {ref}: give both the base and the adapter",
                                  hint="e.g. --model smollm2-135m+adapter:./my-lora")
    return base, adapter, scale


def has_adapter(ref: str) -> bool:
    return ADAPTER in ref


def load_ref(ref: str, **kwargs: Any) -> Any:
    """``edgeslm.load`` of a ``--model`` value; with an adapter, the model with it on by default."""
    import edgeslm

    base, adapter, scale = parse_ref(ref)
    if adapter is None:
        return edgeslm.load(base, **kwargs)
    return edgeslm.load(base, adapters={"adapter": (adapter, scale)}, **kwargs).with_adapter("adapter")
