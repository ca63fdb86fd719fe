"""``tandem expert train``: LoRA fine-tuning of a small model, exported for llama.cpp.

transformers + peft on torch (CPU here, CUDA when present). Seeded: the batch order of
every epoch is a permutation drawn from ``seed + epoch``, LoRA's A matrices come from
``seed``, dropout is off, so a run is a function of its inputs. Resumable: every
``save_every`` steps (and at the end) the adapter, the optimizer and the counters are
written to ``OUT/checkpoint.pt``; running the same command again continues from there
(``--max-steps`` or ``--epochs`` may grow between runs: they only say where to stop).
The learning rate warms up over a fixed number of steps and then stays constant, so a
resumed run takes the very steps an uninterrupted one would have taken.

Output: ``OUT/adapter.gguf`` (llama.cpp's LoRA layout, see lora_gguf.py; load it with
``lora:``), ``OUT/peft/`` (the same adapter for transformers), ``OUT/train.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clients.proxy_tuning.expert.data import IGNORE, Example, tokenize
from clients.proxy_tuning.expert.lora_gguf import write_lora_gguf
from clients.proxy_tuning.expert.source import Source, open_source

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                  "down_proj")
WARMUP_STEPS = 5
_PEFT_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")


@dataclass
class TrainOptions:
    data: str
    model: str
    out: str
    max_steps: int | None = None
    epochs: float = 1.0
    rank: int = 8
    alpha: float | None = None  # default 2 * rank
    lr: float = 1e-3
    batch_size: int = 4
    n_ctx: int = 2048
    seed: int = 0
    save_every: int = 25
    device: str | None = None  # default: cuda when available, else cpu

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank


@dataclass
class TrainReport:
    out: str
    adapter: str
    steps: int
    examples: int
    trained_tokens: int  # assistant tokens the loss was taken on, summed over steps
    tokens_seen: int  # every token through the model, summed over steps
    seconds: float
    tokens_per_s: float
    device: str
    losses: list[float] = field(default_factory=list)  # per step
    resumed_from: int = 0


def _run_key(opts: TrainOptions, data_bytes: bytes) -> str:
    """What a checkpoint must agree on to be continued (not where to stop)."""
    what = json.dumps([hashlib.sha256(data_bytes).hexdigest(), opts.model, opts.rank,
                       opts.lora_alpha, opts.lr, opts.batch_size, opts.n_ctx, opts.seed])
    return hashlib.sha256(what.encode()).hexdigest()


def _batch_indices(step: int, n: int, batch: int, seed: int) -> list[int]:
    per_epoch = math.ceil(n / batch)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(n)
    return [int(i) for i in order[k * batch:(k + 1) * batch]]


def _collate(examples: list[Example], pad_id: int, device: str):
    import torch

    width = max(len(e.tokens) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.tokens)
        ids[row, :n] = torch.tensor(e.tokens)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return ids.to(device), mask.to(device), labels.to(device)


def lora_pairs(model, arch: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """peft's LoRA matrices by Hugging Face module name, in llama.cpp's row order."""
    from peft import get_peft_model_state_dict

    found: dict[str, dict[str, np.ndarray]] = {}
    for key, value in get_peft_model_state_dict(model).items():
        m = _PEFT_KEY.match(key)
        if m:
            found.setdefault(m.group(1), {})[m.group(2)] = value.detach().cpu().float().numpy()
    cfg = model.base_model.model.config
    pairs = {}
    for module, ab in found.items():
        b = ab["B"]
        if arch == "llama" and module.endswith(("q_proj", "k_proj")):
            # llama.cpp's converter permutes Llama's q/k rows (rotary pairs interleaved);
            # the adapter's output rows must follow the same order.
            heads = (cfg.num_attention_heads if module.endswith("q_proj")
                     else cfg.num_key_value_heads)
            b = b.reshape(heads, 2, b.shape[0] // heads // 2, b.shape[1]).swapaxes(1, 2)
            b = b.reshape(ab["B"].shape)
        pairs[module] = (ab["A"], b)
    return pairs


def _device(opts: TrainOptions) -> str:
    import torch

    if opts.device:
        return opts.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def train(opts: TrainOptions, progress: bool = True) -> TrainReport:
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from tqdm import tqdm

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    data_bytes = Path(opts.data).read_bytes() if Path(opts.data).is_file() else b""
    device = _device(opts)
    torch.manual_seed(opts.seed)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    source: Source = open_source(opts.model, device)
    examples = tokenize(opts.data, source.renderer, opts.n_ctx)
    per_epoch = math.ceil(len(examples) / opts.batch_size)
    total = opts.max_steps or max(1, math.ceil(opts.epochs * per_epoch))
    model = get_peft_model(source.model, LoraConfig(
        r=opts.rank, lora_alpha=opts.lora_alpha, lora_dropout=0.0, bias="none",
        target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / WARMUP_STEPS))

    key = _run_key(opts, data_bytes)
    ckpt_path = out / "checkpoint.pt"
    state = {"step": 0, "losses": [], "trained": 0, "seen": 0, "seconds": 0.0}
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("key") == key:
            set_peft_model_state_dict(model, ckpt["lora"])
            optim.load_state_dict(ckpt["optim"])
            sched.load_state_dict(ckpt["sched"])
            state = ckpt["state"]
    resumed_from = state["step"]

    def save() -> None:
        from peft import get_peft_model_state_dict

        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"key": key, "lora": get_peft_model_state_dict(model),
                    "optim": optim.state_dict(), "sched": sched.state_dict(),
                    "state": state}, tmp)
        tmp.replace(ckpt_path)

    pad_id = source.model.config.pad_token_id or 0
    model.train()
    bar = tqdm(total=total, initial=state["step"], unit="step", disable=not progress,
               desc="expert train")
    while state["step"] < total:
        started = time.perf_counter()
        batch = [examples[i] for i in _batch_indices(state["step"], len(examples),
                                                     opts.batch_size, opts.seed)]
        ids, mask, labels = _collate(batch, pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
            ignore_index=IGNORE)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        value = loss.item()
        state["step"] += 1
        state["losses"].append(round(value, 5))
        state["trained"] += sum(e.trained_tokens for e in batch)
        state["seen"] += int(mask.sum())
        state["seconds"] += time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}",
                        tok_s=f"{state['seen'] / max(state['seconds'], 1e-9):.0f}")
        if state["step"] % opts.save_every == 0 or state["step"] == total:
            save()
    bar.close()

    model.eval()
    adapter = write_lora_gguf(out / "adapter.gguf", source.arch,
                              source.model.config.num_hidden_layers,
                              lora_pairs(model, source.arch), opts.lora_alpha,
                              name=f"tandem-expert-{Path(opts.data).stem}")
    model.save_pretrained(str(out / "peft"))
    report = TrainReport(
        out=str(out), adapter=str(adapter), steps=state["step"], examples=len(examples),
        trained_tokens=state["trained"], tokens_seen=state["seen"],
        seconds=round(state["seconds"], 2),
        tokens_per_s=round(state["seen"] / max(state["seconds"], 1e-9), 1), device=device,
        losses=state["losses"], resumed_from=resumed_from)
    (out / "train.json").write_text(json.dumps({**asdict(report), "options": asdict(opts)},
                                               indent=2))
    return report


def proxy_yaml(opts: TrainOptions, adapter: str) -> str:
    """The configuration that serves the new expert, steering a large base."""
    return f"""\
models:
  expert:                  # the small model with the fine-tuned adapter
    backend: llama_cpp
    model: {opts.model}
    lora: {adapter}
  local:                   # the same file without it: the anti-expert (weights shared)
    backend: llama_cpp
    model: {opts.model}
  tuned:                   # the large base, steered by what the expert learned
    backend: proxy_tuning
    base: cloud            # any configured model with token logprobs (local or remote)
    expert: expert
    anti_expert: local
    alpha: 1.0
"""
