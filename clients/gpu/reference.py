"""Random-weight Llama models and the reference-style proxy-tuning loop (transformers).

Shared by the GPU tests and ``bench/gpu_proxy.py``; nothing here is on a serving path.

``reference_proxy_generate`` is the loop of alisawuffles/proxy-tuning: three Hugging
Face models one after another at every step, each with its own dynamic KV cache,
``base + alpha * (expert - anti)`` on the last position, then argmax or top-p sampling.

``structure_`` gives random models a known successor rule, because models with i.i.d.
random weights are unlike trained ones in the way that matters for two measurements:
their next-token logits are nearly flat (the top two are often closer than bf16's
rounding, so bf16 and float32 argmaxes part within a few tokens), and a small model
predicts nothing of a large one (speculative drafts are never accepted). See the
function for the rule and ``docs/PERFORMANCE.md`` for how the numbers were taken.
"""

from __future__ import annotations

import torch

TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4)
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32)


def random_llama(shape: dict, seed: int, device: str, dtype: torch.dtype, vocab: int = 32000,
                 max_positions: int = 4096):
    """A ``LlamaForCausalLM`` with normal(0, 0.02) weights that are exact bf16 values
    (so a float32 copy and a bf16 copy hold the same weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=max_positions,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                      **shape)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
                        .mul_(0.02).to(torch.bfloat16))
    return model.eval()


def structure_(model, successor: torch.Tensor, strength: torch.Tensor, scale: float = 10.0,
               seed: int = 0):
    """Make ``model`` predict ``successor[t]`` after token ``t`` with logit about
    ``scale * strength[t]`` (the rest of the vocabulary stays near 0). Idempotent.

    The embeddings are redrawn with standard deviation 20, so the token's own direction
    dominates the residual stream (each layer's output has an RMS of about 1-2), and
    the output row of ``successor[t]`` is set to the embedding of ``t``: every layer
    still runs and shifts the logits by a few tenths, but the top candidate leads by
    several units. Weights stay bf16 values.
    """
    std = 20.0
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        h = emb.shape[1]
        gen = torch.Generator(device=emb.device).manual_seed(seed)
        emb.copy_((torch.randn(emb.shape, generator=gen, device=emb.device) * std)
                  .to(torch.bfloat16))
        head = torch.zeros_like(model.lm_head.weight, dtype=torch.float32)
        head.index_add_(0, successor, emb.float() * (strength[:, None] * scale / (h * std)))
        model.lm_head.weight.copy_(head.to(torch.bfloat16))
    return model


def successor_rules(vocab: int, seed: int, tuned: float, base_only: float, device: str):
    """(anti, expert, base) successor maps and the base's strengths.

    The anti-expert follows a random map ``pi``; the expert follows ``pi`` except on a
    fraction ``tuned`` of tokens (what tuning changed; the fused model follows the
    expert there); the base follows ``pi`` except on a fraction ``base_only`` where it
    predicts its own token twice as strongly (knowledge the small models lack: there the
    fused argmax is the base's token and an expert draft is rejected)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    pi = torch.randint(0, vocab, (vocab,), generator=g)
    expert = torch.where(torch.rand(vocab, generator=g) < tuned,
                         torch.randint(0, vocab, (vocab,), generator=g), pi)
    own = torch.rand(vocab, generator=g) < base_only
    base = torch.where(own, torch.randint(0, vocab, (vocab,), generator=g), pi)
    strength = torch.where(own, 2.0, 1.0)
    one = torch.ones(vocab)
    return [(r.to(device), s.to(device)) for r, s in
            ((pi, one), (expert, one), (base, strength))]


@torch.no_grad()
def reference_proxy_generate(base, expert, anti, prompts: list[list[int]], steps: int,
                             alpha: float = 1.0, temperature: float = 0.0, top_p: float = 1.0,
                             return_logits: bool = False):
    """Greedy (temperature 0) or sampled proxy-tuned tokens, three models in turn
    (``expert`` and ``anti`` None: the base alone)."""
    from transformers import DynamicCache

    dev = next(base.parameters()).device
    ids = torch.tensor(prompts, device=dev)
    models = [m for m in (base, expert, anti) if m is not None]
    caches = [DynamicCache() for _ in models]
    out, logits_seen = [], []
    feed = ids
    vocab = models[-1].config.vocab_size
    for _ in range(steps):
        lg = []
        for model, cache in zip(models, caches):
            # Prompts of one length: no padding, so no attention mask to build per step;
            # only the last position's logits are computed.
            o = model(input_ids=feed, past_key_values=cache, use_cache=True, logits_to_keep=1)
            lg.append(o.logits[:, -1, :vocab].float())
        fused = lg[0] + alpha * (lg[1] - lg[2]) if len(lg) == 3 else lg[0]
        if return_logits:
            logits_seen.append(fused)
        if temperature <= 0:
            nxt = fused.argmax(-1)
        else:
            probs = torch.softmax(fused / temperature, -1)
            sp, idx = probs.sort(-1, descending=True)
            sp[(sp.cumsum(-1) - sp) >= top_p] = 0
            nxt = idx.gather(-1, torch.multinomial(sp, 1))[:, 0]
        out.append(nxt)
        feed = nxt[:, None]
    tokens = torch.stack(out, 1).tolist()
    return (tokens, torch.stack(logits_seen, 1)) if return_logits else tokens
