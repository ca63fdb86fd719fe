"""Logit fusion, sampling and speculative acceptance, all on the device.

Fusion is on raw logits, ``base + alpha * (expert - anti)``, in float32: with the whole
vocabulary present, log-softmax only subtracts one constant per model, which changes
neither the argmax nor the softmax of the sum, so the three log-softmax passes would
buy nothing (the reported scores are normalised once, after fusing).

Randomness is a counter-based hash of (request seed, token position, purpose), not a
generator state: a graph replay needs no host input, a request's seed gives the same
draws whatever else shares its batch, and the speculative path and the plain path draw
independent uniforms for every decision. Rows with temperature 0 get a one-hot
distribution, so one code path serves greedy and sampled rows mixed in a batch.
"""

from __future__ import annotations

import torch

DRAW, DRAFT, ACCEPT, RESIDUAL = 0, 1, 2, 3  # purposes of a uniform draw
_M32 = 0xFFFFFFFF


def uniform(seed: torch.Tensor, counter: torch.Tensor, purpose: int) -> torch.Tensor:
    """U[0, 1) per element from (seed, counter, purpose): murmur3's 32-bit finaliser."""
    x = ((seed & _M32) * 0x9E3779B1 + (counter & _M32) * 0x85EBCA77 + purpose * 0xC2B2AE3D) & _M32
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    x = x ^ (x >> 16)
    return (x >> 8).float() * (1.0 / (1 << 24))


def fuse(base: torch.Tensor, expert: torch.Tensor, anti: torch.Tensor, alpha: float):
    return base + alpha * (expert - anti)


def probs(logits: torch.Tensor, temp: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Rows [R, V] -> the distribution decoding draws from: softmax(logits / T) cut to
    the nucleus of mass ``top_p`` and renormalised; one-hot argmax where T == 0."""
    greedy = temp <= 0
    t = torch.where(greedy, torch.ones_like(temp), temp)
    p = torch.softmax(logits / t[:, None], dim=-1)
    sp, idx = p.sort(dim=-1, descending=True)
    keep_sorted = (sp.cumsum(-1) - sp) < top_p[:, None]  # the best token always stays
    keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
    p = p * keep
    p = p / p.sum(-1, keepdim=True)
    onehot = torch.zeros_like(p).scatter(-1, logits.argmax(-1, keepdim=True), 1.0)
    return torch.where(greedy[:, None], onehot, p)


def draw(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw of one token per row of ``p`` [R, V] (need not sum to 1)."""
    cdf = p.cumsum(-1)
    tok = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return tok.clamp_(max=p.shape[-1] - 1)


def next_tokens(fused: torch.Tensor, temp, top_p, seed, counter, greedy_only: bool):
    """One token per row of ``fused`` [R, V]."""
    if greedy_only:
        return fused.argmax(-1)
    return draw(probs(fused, temp, top_p), uniform(seed, counter, DRAW))


def accept_greedy(drafts: torch.Tensor, fused: torch.Tensor):
    """Drafts [B, k] against fused scores [B, k+1, V]: the longest prefix equal to the
    fused argmax is kept, then the argmax at the first mismatch (or after the last
    draft). Returns (tokens [B, k+1], count of valid tokens [B] = accepted + 1)."""
    target = fused.argmax(-1)
    ok = (drafts == target[:, :-1]).long().cumprod(-1).sum(-1)
    return target, ok + 1


def accept_sampled(drafts, q, fused, temp, top_p, seed, pos):
    """Speculative sampling (Leviathan et al. 2023): draft i is kept with probability
    min(1, p_i(d)/q_i(d)); at the first rejection a token is drawn from the normalised
    max(0, p - q); if every draft is kept, one more from p after the last. The emitted
    tokens are distributed exactly as sampling from p one step at a time.

    drafts [B, k], q [B, k, V] the draft distributions, fused [B, k+1, V]; ``pos`` [B]
    is the position of the token the drafts follow (for the counters)."""
    b, k1, v = fused.shape
    k = k1 - 1
    rep = lambda x: x[:, None].expand(b, k1).reshape(-1)  # noqa: E731
    p = probs(fused.reshape(b * k1, v), rep(temp), rep(top_p)).view(b, k1, v)
    steps = torch.arange(1, k1 + 1, device=fused.device)
    counters = pos[:, None] + steps  # the position each emitted token would take
    pd = p[:, :k].gather(-1, drafts[..., None])[..., 0]
    qd = q.gather(-1, drafts[..., None])[..., 0]
    u = uniform(seed[:, None], counters[:, :k], ACCEPT)
    kept = (u * qd < pd).long().cumprod(-1).sum(-1)  # [B]
    resid = torch.cat([(p[:, :k] - q).clamp_min(0), p[:, k:]], 1)
    empty = resid.sum(-1, keepdim=True) <= 0
    resid = torch.where(empty, p, resid)  # only where p == q: no rejection happened there
    r = draw(resid.reshape(b * k1, v), uniform(rep(seed), counters.reshape(-1), RESIDUAL))
    r = r.view(b, k1)
    padded = torch.cat([drafts, r[:, k:]], 1)
    tokens = torch.where(steps[None, :] - 1 < kept[:, None], padded, r)
    return tokens, kept + 1
