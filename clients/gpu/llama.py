"""A minimal Llama forward in torch over static KV caches, for one or several models.

``LlamaStack`` holds M models of one architecture with their weights stacked on a
leading axis ([M, out, in]): the expert and the anti-expert (same shape) then run as
one batched model, so every matrix product reads both weight sets in one kernel and
the per-layer small kernels are paid once for the pair, not twice. M = 1 for the base.

Numerics follow Hugging Face's LlamaForCausalLM: RMSNorm in float32, rotate-half RoPE
(q/k weights as stored by HF, no permutation), grouped-query attention with the
softmax in float32; the residual stream is kept in float32 (activations are tiny at
decode time and this keeps bf16 rounding from compounding over the layers).

Shapes: tokens [B, T]; ``pos`` [B] is the position of each row's first token (rows
of a batch may have different lengths); caches [M, B, Hkv, S, D] per layer; attention
reads only the first ``span`` cache positions, so a CUDA graph captured for a span
bucket costs what the sequences' lengths cost, not the cache's capacity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LlamaShape:
    """The architecture numbers that matter for the forward (from config.json)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    head_dim: int
    eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False

    @classmethod
    def from_hf(cls, cfg: Mapping) -> "LlamaShape":
        """From a config.json mapping or a transformers ``LlamaConfig``'s dict."""
        arch = cfg.get("architectures") or ["LlamaForCausalLM"]
        if cfg.get("model_type", "llama") != "llama" or "LlamaForCausalLM" not in arch:
            raise ValueError(f"not a Llama checkpoint (model_type={cfg.get('model_type')!r}, "
                             f"architectures={arch})")
        if cfg.get("rope_scaling"):
            raise ValueError(f"rope_scaling {cfg['rope_scaling']!r} is not supported")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError("Llama variants with biases are not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {cfg.get('hidden_act')!r} is not supported")
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(
            hidden=hidden, layers=int(cfg["num_hidden_layers"]), heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            ffn=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )


def _hf_key(layer: int | None, name: str) -> str:
    return f"model.layers.{layer}.{name}.weight" if layer is not None else name


class _Reader:
    """Tensors by HF name from a checkpoint directory (safetensors) or a state dict."""

    def __init__(self, source: "str | Path | Mapping[str, torch.Tensor]") -> None:
        self._dict: Mapping[str, torch.Tensor] | None = None
        self._files: dict[str, Path] = {}
        if isinstance(source, Mapping):
            self._dict = source
            return
        root = Path(source)
        files = sorted(root.glob("*.safetensors"))
        if not files:
            raise ValueError(f"{root}: no *.safetensors files (convert .bin checkpoints first)")
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="pt") as h:
                for key in h.keys():
                    self._files[key] = f

    def has(self, key: str) -> bool:
        return key in (self._dict if self._dict is not None else self._files)

    def get(self, key: str) -> torch.Tensor:
        if self._dict is not None:
            return self._dict[key]
        from safetensors import safe_open

        with safe_open(str(self._files[key]), framework="pt") as h:
            return h.get_tensor(key)


def read_shape(source: "str | Path | Mapping") -> LlamaShape:
    """The shape of a checkpoint directory (config.json) or a config mapping."""
    if isinstance(source, Mapping):
        return LlamaShape.from_hf(source)
    return LlamaShape.from_hf(json.loads((Path(source) / "config.json").read_text()))


class LlamaStack:
    """M same-shape Llama models, weights stacked, run together on one batch of tokens."""

    def __init__(self, shape: LlamaShape, sources: list, device: str = "cuda",
                 dtype: torch.dtype = torch.bfloat16) -> None:
        self.shape, self.m, self.device, self.dtype = shape, len(sources), device, dtype
        readers = [_Reader(s) for s in sources]
        s = shape

        def stack(keys: list[str], layer: int | None = None) -> torch.Tensor:
            """Concatenate ``keys`` along the output axis, then stack the M models."""
            parts = []
            for r in readers:
                ts = [r.get(_hf_key(layer, k)).to(device=device, dtype=dtype) for k in keys]
                parts.append(ts[0] if len(ts) == 1 else torch.cat(ts, 0))
            return torch.stack(parts).contiguous()

        self.embed = stack(["model.embed_tokens.weight"])
        head = "model.embed_tokens.weight" if s.tie_embeddings else "lm_head.weight"
        if not s.tie_embeddings and not all(r.has(head) for r in readers):
            head = "model.embed_tokens.weight"  # some exports drop the tied copy
        self.lm_head = stack([head])
        self.norm = stack(["model.norm.weight"]).float()
        self.layer_weights = []
        for i in range(s.layers):
            self.layer_weights.append((
                stack(["input_layernorm"], i).float(),
                stack(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], i),
                stack(["self_attn.o_proj"], i),
                stack(["post_attention_layernorm"], i).float(),
                stack(["mlp.gate_proj", "mlp.up_proj"], i),
                stack(["mlp.down_proj"], i),
            ))
        inv = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, device=device,
                                                   dtype=torch.float32) / s.head_dim))
        self._inv_freq = inv
        self.weight_bytes = sum(t.numel() * t.element_size() for t in self._all_weights())

    def _all_weights(self):
        yield self.embed
        yield self.lm_head
        for lw in self.layer_weights:
            yield from lw

    def new_cache(self, batch: int, capacity: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Static K/V buffers for ``batch`` slots of ``capacity`` positions."""
        s = self.shape
        dims = (self.m, batch, s.kv_heads, capacity, s.head_dim)
        return [(torch.zeros(dims, device=self.device, dtype=self.dtype),
                 torch.zeros(dims, device=self.device, dtype=self.dtype))
                for _ in range(s.layers)]

    # -- the forward -------------------------------------------------------------------
    def _linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x [M, N, in] @ w[M, out, in]^T; one plain GEMM when M == 1."""
        if self.m == 1:
            return F.linear(x[0], w[0]).unsqueeze(0)
        return torch.bmm(x, w.transpose(1, 2))

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, cache: list, span: int,
                kernels: "Kernels | None" = None) -> torch.Tensor:
        """Logits [M, B, T, V] (float32) for ``tokens`` [B, T] written at ``pos`` [B].

        ``cache`` may be a slice of the slots (cache[:, a:b]) as long as its batch axis
        matches ``tokens``; only cache positions < ``span`` are attended to, and every row
        must satisfy pos + T <= span.
        """
        k_ = kernels or EAGER
        s, m = self.shape, self.m
        b, t = tokens.shape
        n = b * t
        positions = pos[:, None] + torch.arange(t, device=tokens.device)  # [B, T]
        freqs = positions.float()[..., None] * self._inv_freq  # [B, T, D/2]
        cos, sin = freqs.cos(), freqs.sin()
        # Row b, query t sees keys at positions <= pos[b] + t.
        keys = torch.arange(span, device=tokens.device)
        mask = keys[None, None, :] <= positions[:, :, None]  # [B, T, S]
        x = self.embed[:, tokens.reshape(-1)].float()  # [M, N, H] residual, float32
        hd, nh, nkv = s.head_dim, s.heads, s.kv_heads
        group = nh // nkv
        batch_idx = torch.arange(b, device=tokens.device)[:, None].expand(b, t)
        h = k_.rms_norm(x, self.layer_weights[0][0], s.eps, self.dtype)
        for i, (ln1, wqkv, wo, ln2, w13, w2) in enumerate(self.layer_weights):
            qkv = self._linear(h, wqkv).view(m, b, t, (nh + 2 * nkv), hd)
            q, kk = k_.rope(qkv[..., :nh, :], qkv[..., nh:nh + nkv, :], cos, sin)
            v = qkv[..., nh + nkv:, :]
            kc, vc = cache[i]
            # Scatter this step's K/V into the static cache at each row's positions.
            # (indices on axes 1 and 3 put the [B, T] index axes first)
            kc[:, batch_idx, :, positions] = kk.permute(1, 2, 0, 3, 4).to(self.dtype)
            vc[:, batch_idx, :, positions] = v.permute(1, 2, 0, 3, 4)
            attn = _attention(q, kc[:, :, :, :span], vc[:, :, :, :span], mask, group,
                              k_.masked_softmax)  # [M, B, T, nh*hd]
            x, h = k_.add_rms_norm(x, self._linear(attn.reshape(m, n, nh * hd), wo), ln2,
                                   s.eps, self.dtype)
            gu = self._linear(h, w13)
            nxt = self.layer_weights[i + 1][0] if i + 1 < s.layers else self.norm
            x, h = k_.add_rms_norm(x, self._linear(k_.silu_mul(gu), w2), nxt, s.eps,
                                   self.dtype)
        return self._linear(h, self.lm_head).float().view(m, b, t, s.vocab)


def _attention(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, mask: torch.Tensor,
               group: int, masked_softmax: Callable) -> torch.Tensor:
    """Grouped-query attention without repeating K/V: the ``group`` query heads that
    share a K/V head are folded into the query-length axis of one batched product."""
    m, b, t, nh, hd = q.shape
    nkv = kc.shape[2]
    qg = q.permute(0, 1, 3, 2, 4).reshape(m, b, nkv, group * t, hd)  # heads grouped
    scores = torch.matmul(qg.to(kc.dtype), kc.transpose(-1, -2))  # [M, B, nkv, G*T, S]
    span = kc.shape[3]
    full_mask = mask[None, :, None, None].expand(1, b, 1, group, t, span)
    probs = masked_softmax(scores.view(m, b, nkv, group, t, span), full_mask, hd ** -0.5)
    out = torch.matmul(probs.to(vc.dtype).view(m, b, nkv, group * t, span), vc)
    return out.view(m, b, nh, t, hd).permute(0, 1, 3, 2, 4)


# -- the elementwise pieces, eager; ``Kernels`` swaps in compiled versions ---------------
def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return (y * w[:, None, :]).to(dtype)


def _add_rms_norm(x, delta, w, eps, dtype):
    x = x + delta.float()
    return x, _rms_norm(x, w, eps, dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's rotate-half RoPE on [M, B, T, heads, D] with cos/sin [B, T, D/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    c, s_ = cos[None, :, :, None, :], sin[None, :, :, None, :]
    return torch.cat([x1 * c - x2 * s_, x2 * c + x1 * s_], -1)


def _rope(q, k, cos, sin):
    return _rotate(q, cos, sin).to(q.dtype), _rotate(k, cos, sin).to(k.dtype)


def _masked_softmax(scores, mask, scale):
    s = scores.float() * scale
    return torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)


def _silu_mul(gu: torch.Tensor) -> torch.Tensor:
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


@dataclass(frozen=True)
class Kernels:
    """The elementwise steps of a layer; eager by default, fused by torch.compile."""

    rms_norm: Callable = _rms_norm
    add_rms_norm: Callable = _add_rms_norm
    rope: Callable = _rope
    masked_softmax: Callable = _masked_softmax
    silu_mul: Callable = _silu_mul


EAGER = Kernels()


def compiled_kernels() -> Kernels:
    """Each elementwise step compiled into one fused kernel (dynamic shapes, so a new
    batch size or span reuses the kernel); the matrix products stay on cuBLAS."""
    # One code object per step serves every stack, dtype and layout: allow the variants.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    c = lambda f: torch.compile(f, dynamic=True, fullgraph=True)  # noqa: E731
    return Kernels(c(_rms_norm), c(_add_rms_norm), c(_rope), c(_masked_softmax), c(_silu_mul))
