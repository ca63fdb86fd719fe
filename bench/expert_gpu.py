"""What a GPU buys `tandem expert train`: LoRA steps on a Qwen2.5-0.5B-shaped model.

Speed does not depend on the weights' values, so the model is randomly initialised
from Qwen2.5-0.5B's shape (no model files reach the GPU machine). A step is what
`tandem expert train` runs with its defaults on the house-arc data: batch 4, ~90
tokens per example, rank 8 on every attention and MLP projection, AdamW, loss over the
whole vocabulary. Reports seconds per step and tokens/s on each device given.

    python bench/expert_gpu.py [--device cuda] [--steps 20] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                max_position_embeddings=32768, tie_word_embeddings=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=90)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN_05B)).to(args.device, dtype)
    model = get_peft_model(model, LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"]))
    params = [q for q in model.parameters() if q.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, 151936, (args.batch, args.tokens), device=args.device)
    labels = ids.clone()
    times = []
    for step in range(args.steps + 3):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 labels.reshape(-1))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= 3:  # warm-up excluded
            times.append(time.perf_counter() - t0)
    per_step = sorted(times)[len(times) // 2]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{name}: {per_step * 1000:.1f} ms/step (median of {len(times)}), "
          f"{args.batch * args.tokens / per_step:.0f} tokens/s, {args.dtype}")
    print(json.dumps({"bench": "expert_gpu", "device": name, "dtype": args.dtype,
                      "ms_per_step": round(per_step * 1000, 1),
                      "tokens_per_s": round(args.batch * args.tokens / per_step),
                      "batch": args.batch, "tokens": args.tokens}))


if __name__ == "__main__":
    main()
