"""``edgeslm.finetune``: a LoRA fine-tune of a base model on chat-format examples (teacher labels,
escalation records), for the prompts edgeslm itself will send. Extra ``train`` (torch,
transformers, peft), imported only here.

What makes the adapter fit inference:

* **the same tokens**: each example's prompt is rendered by edgeslm's own chat templating and
  tokenized by the engine the adapter will run in (llama.cpp), exactly as ``extract`` / ``chat``
  render it; the answer is the JSON as the grammar writes it (compact, keys in schema order when a
  schema is given), followed by the end-of-turn token the template closes a reply with;
* **the same weights**: the base GGUF dequantized by transformers (or a Hugging Face folder of the
  same model, ``weights=``); the loss is on the answer tokens only;
* **a held-out split** scored after each epoch, with early stopping on its loss, and the best
  epoch's adapter kept.

The output folder holds the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``),
its GGUF conversion (``adapter.gguf``) and a model card (``edgeslm_adapter.json``, ``README.md``)
with the base file's hash, the data's hash, the steps and the evaluation figures.

Over ~450 lines on purpose: one training run end to end (data, the prompt rendered as at inference,
the loop with early stopping, the PEFT and GGUF outputs, the card); the steps share the run's state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import DatasetError, InvalidRequestError, MissingExtraError

__all__ = ["DEFAULT_TARGETS", "FinetuneReport", "finetune", "read_dataset"]

#: The projections a LoRA adapts by default (the names of Llama, Qwen, Gemma, Mistral...).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_INSTALL = 'pip install "edgeslm[train]"  (torch, transformers, peft)'


@dataclass
class FinetuneReport:
    """What :func:`finetune` did and measured."""

    out: Path
    adapter_gguf: Path
    base: str
    base_sha256: str
    data_sha256: str
    examples: int
    train_examples: int
    eval_examples: int
    skipped: list[str] = field(default_factory=list)
    steps: int = 0
    epochs_run: int = 0
    best_epoch: int = 0
    train_loss: list[float] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_token_accuracy: list[float] = field(default_factory=list)
    eval_loss_before: float | None = None
    seconds: float = 0.0
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        ev = (f"held-out loss {self.eval_loss_before:.3f} -> {min(self.eval_loss):.3f}"
              if self.eval_loss and self.eval_loss_before is not None else "no held-out split")
        return (f"LoRA on {self.base}: {self.train_examples} examples, {self.steps} steps, "
                f"{self.epochs_run} epochs (best {self.best_epoch}), {ev}, {self.seconds:.0f} s on {self.device} "
                f"-> {self.out}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"], d["adapter_gguf"] = str(self.out), str(self.adapter_gguf)
        return d


# ------------------------------------------------------------------------------------------ the data


def read_dataset(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The examples of a chat-format JSON Lines file (``{"messages": [..., {"role": "assistant",
    "content": ...}]}``, as ``edgeslm teach`` and ``Escalation(record_to=...)`` write it), and why
    lines were skipped (tool-call answers). A malformed line is a :class:`DatasetError` naming it."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read the dataset {p}: {exc}", hint="check the path") from None
    out: list[dict[str, Any]] = []
    skipped: list[str] = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{p.name} line {n}"
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DatasetError(f"{where} is not JSON ({exc})",
                               hint="each line must be one JSON object; fix or delete that line") from None
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(msgs, list) or len(msgs) < 2 or not all(isinstance(m, dict) for m in msgs):
            raise DatasetError(f"{where} has no list of messages",
                               hint='each line: {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}')
        for i, m in enumerate(msgs):
            if m.get("role") not in ("system", "user", "assistant", "tool") or \
                    not isinstance(m.get("content", ""), (str, type(None))):
                raise DatasetError(f"{where}: message {i} has no valid role and text content",
                                   hint="roles are system, user, assistant or tool; content is a string")
        last = msgs[-1]
        if last.get("role") != "assistant":
            raise DatasetError(f"{where} does not end with the assistant's answer",
                               hint="the last message of each example is the answer to learn")
        if last.get("tool_calls"):
            skipped.append(f"{where}: a tool-call answer (not trained yet)")
            continue
        if not isinstance(last.get("content"), str) or not last["content"].strip():
            raise DatasetError(f"{where}: the assistant's answer is empty", hint="remove the line or give the answer")
        out.append({"messages": msgs[:-1], "answer": last["content"], "line": n, "file": p.name})
    if not out:
        raise DatasetError(f"{p} holds no usable example", hint="label some texts first (edgeslm teach)")
    return out, skipped


def _ordered(value: Any, schema: Any) -> Any:
    """*value* with object keys in the order of the schema's ``properties`` (the order the grammar writes)."""
    if isinstance(value, dict) and isinstance(schema, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        extra = schema.get("additionalProperties")
        return {k: _ordered(value[k], props.get(k, extra if isinstance(extra, dict) else None)) for k in keys}
    if isinstance(value, list) and isinstance(schema, dict):
        items = schema.get("items")
        return [_ordered(v, items if isinstance(items, dict) else None) for v in value]
    return value


def _answer_text(answer: str, schema: Any, validator: Any, where: str) -> str:
    """The answer as the grammar writes it: compact JSON (keys in schema order with a schema), or
    the text itself when it is not JSON and no schema is given."""
    try:
        value = json.loads(answer)
    except ValueError:
        if schema is not None:
            raise DatasetError(f"{where}: the answer is not JSON, but a schema was given",
                               hint="drop --schema for free-text answers, or fix the line") from None
        return answer
    if validator is not None:
        errors = list(validator.iter_errors(value))
        if errors:
            raise DatasetError(f"{where}: the answer does not match the schema: {errors[0].message[:200]}",
                               hint="fix or remove the line (edgeslm teach writes only valid answers)")
        value = _ordered(value, schema)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ training


def _require() -> tuple[Any, Any, Any]:
    try:
        import peft
        import torch
        import transformers
    except ImportError as exc:
        raise MissingExtraError(f"fine-tuning needs torch, transformers and peft ({exc})", hint=_INSTALL) from None
    return torch, transformers, peft


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _encode(model: Any, examples: list[dict[str, Any]], schema: Any, max_len: int) -> list[tuple[list[int], int]]:
    """``(tokens, where the answer starts)`` per example, prompts rendered as edgeslm renders them."""
    validator = None
    if schema is not None:
        from ..api.extract import prepare_schema

        validator = prepare_schema(schema).validator
    engine = model._engine
    out = []
    for ex in examples:
        where = f"{ex.get('file', 'dataset')} line {ex['line']}"
        answer = _answer_text(ex["answer"], schema, validator, where)
        prompt = model.chat_prompt(ex["messages"])
        full = model.chat_prompt([*ex["messages"], {"role": "assistant", "content": answer}],
                                 add_generation_prompt=False)
        if full[: len(prompt)] == prompt and len(full) > len(prompt):
            target = full[len(prompt):]
            end = next((i for i, t in enumerate(target) if engine.is_eog(t)), None)
            target = target[: end + 1] if end is not None else target
        else:  # a template that renders earlier turns differently once the reply is there
            target = model.tokenize(answer) + ([engine.eos_id] if engine.eos_id is not None else [])
        if len(prompt) + len(target) > max_len:
            raise DatasetError(f"{where} is {len(prompt) + len(target)} tokens, more than max_length={max_len}",
                               hint="shorten the text, or raise max_length (memory grows with it)")
        out.append((prompt + target, len(prompt)))
    return out


def finetune(
    base: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    schema: Any = None,
    weights: str | os.PathLike[str] | None = None,
    rank: int = 16,
    alpha: float = 32.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    epochs: int = 4,
    learning_rate: float = 3e-4,
    batch_size: int = 4,
    eval_fraction: float = 0.15,
    patience: int = 1,
    max_steps: int | None = None,
    max_length: int = 1536,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneReport:
    """LoRA-fine-tune *base* (a catalog id or ``.gguf``: the model the adapter will run on) on the
    chat-format JSON Lines *data*, and write the adapter to *out* (see the module docstring).

    ``schema`` (a JSON Schema or pydantic class): answers are checked against it and written with
    keys in its order, as the grammar writes them. ``weights``: a Hugging Face folder of the same
    model to train on instead of the dequantized GGUF. ``batch_size`` examples make one optimizer
    step; ``max_steps`` bounds the run (tests); ``eval_fraction`` of the examples (at least one when
    there are 8 or more) are held out, and training stops once their loss has not improved for
    ``patience`` epochs. ``device``: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``."""
    for name, v, lo in (("rank", rank, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1),
                        ("max_length", max_length, 16), ("patience", patience, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InvalidRequestError(f"{name} must be an integer >= {lo}, not {v!r}", hint=f"e.g. {name}={max(lo, 4)}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise InvalidRequestError(f"max_steps must be a positive integer or None, not {max_steps!r}", hint="e.g. 20")
    if not 0.0 <= float(eval_fraction) < 0.9:
        raise InvalidRequestError(f"eval_fraction must be within [0, 0.9), not {eval_fraction}", hint="e.g. 0.15")
    if not learning_rate > 0 or not alpha > 0:
        raise InvalidRequestError("learning_rate and alpha must be positive", hint="e.g. learning_rate=3e-4, alpha=32")
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidRequestError(f"device must be auto, cpu or cuda, not {device!r}", hint='e.g. device="cpu"')
    examples, skipped = read_dataset(data)
    torch, transformers, peft = _require()
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidRequestError(f"{out_dir} exists and is not a folder", hint="choose another --out")
    started = time.perf_counter()

    import edgeslm

    from ..backends.gguf_file import validate_gguf

    model = edgeslm.load(base, n_ctx=max_length)
    try:
        gguf_path = Path(model.path)
        info = validate_gguf(gguf_path)
        encoded = _encode(model, examples, schema, max_length)
        n_vocab = model._engine.n_vocab
        base_name = model.name
    finally:
        model.close()

    rng = random.Random(seed)
    order = list(range(len(encoded)))
    rng.shuffle(order)
    n_eval = round(len(order) * eval_fraction) if len(order) >= 8 else 0
    if eval_fraction > 0 and len(order) >= 8:
        n_eval = max(1, n_eval)
    held = [encoded[i] for i in order[:n_eval]]
    train = [encoded[i] for i in order[n_eval:]]

    dev = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if dev == "cpu":
        torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    hf = _hf_model(transformers, torch, gguf_path, weights, dtype)
    emb = hf.get_input_embeddings().weight.shape[0]
    if emb < n_vocab:
        raise InvalidRequestError(f"the training weights have {emb} token embeddings; the base GGUF has {n_vocab}",
                                  hint="weights= must be the same model as the base GGUF")
    present = {n.rsplit(".", 1)[-1] for n, _ in hf.named_modules()}
    chosen = [t for t in targets if t in present]
    if not chosen:
        raise InvalidRequestError(f"none of the target modules {list(targets)} is in this model",
                                  hint=f"choose among its linear layers, e.g. {sorted(present)[:8]}")
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=chosen, lora_dropout=0.05, bias="none",
                          task_type="CAUSAL_LM")
    import warnings

    with warnings.catch_warnings():  # transformers' own deprecation notices, raised inside peft
        warnings.simplefilter("ignore", FutureWarning)
        net = peft.get_peft_model(hf, cfg).to(dev)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = min(steps_per_epoch * epochs, max_steps or 1 << 30)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - max(0, s - warm) / max(1, total - warm)))

    def loss_of(seq: tuple[list[int], int]) -> tuple[Any, int, int]:
        ids = torch.tensor([seq[0]], device=dev)
        logits = net(input_ids=ids).logits[0, seq[1] - 1 : -1].float()
        target = ids[0, seq[1]:]
        loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
        right = int((logits.argmax(-1) == target).sum())
        return loss, right, int(target.numel())

    def evaluate() -> tuple[float, float]:
        if not held:
            return float("nan"), float("nan")
        net.eval()
        tot = right = n = 0.0
        with torch.no_grad():
            for seq in held:
                loss, r, k = loss_of(seq)
                tot += float(loss)
                right += r
                n += k
        net.train()
        return tot / max(1, n), right / max(1, n)

    report = FinetuneReport(
        out=out_dir, adapter_gguf=out_dir / "adapter.gguf", base=base_name, base_sha256=_sha256(gguf_path),
        data_sha256=_sha256(Path(data)), examples=len(encoded), train_examples=len(train), eval_examples=len(held),
        skipped=skipped, device=dev,
        settings={"rank": rank, "alpha": alpha, "targets": chosen, "epochs": epochs, "learning_rate": learning_rate,
                  "batch_size": batch_size, "eval_fraction": eval_fraction, "patience": patience,
                  "max_steps": max_steps, "seed": seed, "weights": os.fspath(weights) if weights else None,
                  "schema": schema is not None},
    )
    report.eval_loss_before = evaluate()[0] if held else None
    best_state: dict[str, Any] | None = None
    best = math.inf
    bar = _bar(total) if progress else None
    net.train()
    try:
        for epoch in range(1, epochs + 1):
            rng.shuffle(train)
            running, count = 0.0, 0
            for start in range(0, len(train), batch_size):
                if report.steps >= total:
                    break
                chunk = train[start : start + batch_size]
                n_tok = sum(len(s[0]) - s[1] for s in chunk)
                opt.zero_grad(set_to_none=True)
                step_loss = 0.0
                for seq in chunk:
                    loss, _, _ = loss_of(seq)
                    (loss / n_tok).backward()
                    step_loss += float(loss.detach())
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                report.steps += 1
                running += step_loss
                count += n_tok
                if bar is not None:
                    bar[0].update(bar[1], advance=1, loss=step_loss / n_tok)
                if on_step is not None:
                    on_step(report.steps, step_loss / n_tok)
            report.epochs_run = epoch
            report.train_loss.append(running / max(1, count))
            ev, acc = evaluate()
            report.eval_loss.append(ev)
            report.eval_token_accuracy.append(acc)
            score = ev if held else -epoch  # without a split the last epoch is kept
            if score < best:
                best, report.best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items() if "lora_" in k}
            elif held and epoch - report.best_epoch >= max(1, patience):
                break
            if report.steps >= total:
                break
    finally:
        if bar is not None:
            bar[0].stop()
    if best_state is not None:
        net.load_state_dict(best_state, strict=False)
    report.seconds = time.perf_counter() - started
    _save(net, report, info, out_dir)
    return report


def _hf_model(transformers: Any, torch: Any, gguf_path: Path, weights: Any, dtype: Any) -> Any:
    import logging
    import warnings

    logging.getLogger("transformers").setLevel(logging.ERROR)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # edgeslm shows its own bar; theirs would interleave
    gguf_utils: Any = None
    try:
        import functools

        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        gguf_tqdm = gguf_utils.tqdm
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    except (ImportError, AttributeError):
        gguf_utils = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if weights is not None:
                return transformers.AutoModelForCausalLM.from_pretrained(os.fspath(weights), dtype=dtype)
            return transformers.AutoModelForCausalLM.from_pretrained(
                os.fspath(gguf_path.parent), gguf_file=gguf_path.name, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidRequestError(
            f"transformers cannot read the training weights ({exc})",
            hint="pass weights= with the base model's Hugging Face folder (transformers reads GGUF for "
            "common architectures only)") from None
    finally:
        if gguf_utils is not None:
            gguf_utils.tqdm = gguf_tqdm
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _bar(total: int) -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("fine-tune"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
                 TimeRemainingColumn(), transient=True)
    task = p.add_task("steps", total=total, loss=float("nan"))
    p.start()
    return p, task


def _save(net: Any, report: FinetuneReport, info: Any, out_dir: Path) -> None:
    """The PEFT folder, its GGUF conversion and the model card, each written whole (temp + rename)."""
    import shutil
    import tempfile

    from .convert import convert_peft

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        import warnings

        with warnings.catch_warnings():  # "could not find a config file": the base is a GGUF, not a hub folder
            warnings.simplefilter("ignore")
            net.save_pretrained(tmp, safe_serialization=True)
        convert_peft(tmp, info, tmp / "adapter.gguf")
        card = report.to_dict()
        (tmp / "edgeslm_adapter.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
        (tmp / "README.md").write_text(_card_text(report), encoding="utf-8")
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _card_text(r: FinetuneReport) -> str:
    rows = "\n".join(f"| {i + 1} | {t:.4f} | {e:.4f} | {a:.3f} |" for i, (t, e, a) in
                     enumerate(zip(r.train_loss, r.eval_loss, r.eval_token_accuracy, strict=False)))
    return (
        f"# LoRA adapter for {r.base}\n\nMade by `edgeslm finetune`. Load it with\n"
        f"`edgeslm.load(\"{r.base}\", adapters={{\"task\": \"{r.out}\"}})`.\n\n"
        f"- base file SHA-256: `{r.base_sha256}`\n- data SHA-256: `{r.data_sha256}`\n"
        f"- examples: {r.examples} ({r.train_examples} train, {r.eval_examples} held out)"
        f"{f', {len(r.skipped)} skipped' if r.skipped else ''}\n"
        f"- steps: {r.steps}, epochs: {r.epochs_run} (best: {r.best_epoch}), {r.seconds:.0f} s on {r.device}\n"
        f"- held-out loss before training: {r.eval_loss_before}\n- settings: `{json.dumps(r.settings)}`\n\n"
        f"| epoch | train loss | held-out loss | held-out token accuracy |\n|---|---|---|---|\n{rows}\n"
    )
