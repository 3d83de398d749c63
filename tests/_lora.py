"""Real PEFT LoRA adapters for the bundled models, made in torch without training (tests only).

A LoRA whose B matrices are random (PEFT starts them at zero, which would change nothing) changes the
model's next-token choice on some prompts, so it tells a correct conversion from a wrong one: a missed
Q/K row permutation, a wrong scale or a transposed pair moves the logits far from torch's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def missing_train_deps() -> list[str]:
    import importlib.util

    return [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]


def hf_model(gguf: Path) -> Any:
    """The GGUF's weights dequantized by transformers, float32, as ``edgeslm.finetune`` trains them."""
    import torch
    import transformers

    from edgeslm.distill.finetune import _hf_model

    return _hf_model(transformers, torch, Path(gguf), None, torch.float32)


def random_lora(base: Any, out: Path, *, seed: int, std: float = 0.08, rank: int = 8, alpha: float = 16.0,
                use_rslora: bool = False, targets: tuple[str, ...] = TARGETS) -> Any:
    """Wrap *base* (a transformers model; wrapped in place) in a LoRA with random A and B, save the PEFT
    folder to *out*, and return the PEFT model (in eval mode) for torch's side of a comparison."""
    import peft
    import torch

    torch.manual_seed(seed)  # PEFT draws A from the global generator
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none",
                          task_type="CAUSAL_LM", use_rslora=use_rslora)
    net = peft.get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    net.eval()
    net.save_pretrained(out, safe_serialization=True)
    return net


def torch_logprobs(net: Any, tokens: list[int]) -> Any:
    """Log-probabilities of the next token after *tokens* (numpy, float64)."""
    import torch

    with torch.no_grad():
        logits = net(input_ids=torch.tensor([tokens])).logits[0, -1].double()
    return torch.log_softmax(logits, -1).numpy()
