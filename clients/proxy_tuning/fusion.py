"""Proxy-tuning arithmetic: ``base + alpha * (expert - anti_expert)`` and its choices.

Pure numpy on log-probabilities (raw logits would give the same distribution over a
whole vocabulary; log-softmax also makes a remote base's top-k log-probabilities
comparable to the local full rows). Models whose output layers differ in length are
compared on the shared range only (trailing padding rows are cut).

With only the base's top-k known, the best fused candidate is *certified* when no token
outside the top-k can beat it: every such token has base <= floor, so its fused score is
at most ``floor + max_outside(alpha * (expert - anti))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clients.scoring import NextTokenScores


@dataclass(frozen=True)
class Choice:
    token: int
    certified: bool  # False: a token outside the base's top-k might score higher


def steer(expert: np.ndarray, anti: np.ndarray, alpha: float, n: int,
          allowed: np.ndarray | None = None) -> np.ndarray:
    """``alpha * (expert - anti)`` on the first ``n`` tokens; -inf where ``allowed`` (a
    constraint's mask) is False, which masks the fused scores exactly, and makes the
    certificate's bound range over allowed tokens only."""
    delta = alpha * (expert[:n] - anti[:n])
    if allowed is not None:
        delta = np.where(allowed[:n], delta, -np.inf)
    return delta


def shared_size(base: NextTokenScores, expert: np.ndarray, anti: np.ndarray,
                base_vocab: int) -> int:
    n = min(len(expert), len(anti), base_vocab)
    if base.logprobs is not None:
        n = min(n, len(base.logprobs))
    return n


def fused_full(base: np.ndarray, expert: np.ndarray, anti: np.ndarray,
               alpha: float) -> np.ndarray:
    n = min(len(base), len(expert), len(anti))
    return base[:n] + steer(expert, anti, alpha, n)


def _candidates(base: NextTokenScores, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The base's known top-k within the shared range, ordered by token id (so that ties
    break toward the lower id, as ``argmax`` over the full row does)."""
    assert base.top_ids is not None and base.top_logprobs is not None
    keep = base.top_ids < n
    ids, lps = base.top_ids[keep], base.top_logprobs[keep]
    order = np.argsort(ids, kind="stable")
    return ids[order], lps[order]


def greedy(base: NextTokenScores, expert: np.ndarray, anti: np.ndarray, alpha: float,
           base_vocab: int, allowed: np.ndarray | None = None) -> Choice:
    """The fused argmax (over ``allowed`` tokens); certified unless only a top-k is known
    and the bound fails, or no allowed token is among the top-k."""
    n = shared_size(base, expert, anti, base_vocab)
    delta = steer(expert, anti, alpha, n, allowed)
    if base.logprobs is not None:
        return Choice(int(np.argmax(base.logprobs[:n] + delta)), True)
    ids, lps = _candidates(base, n)
    if len(ids) == 0:
        return Choice(int(np.argmax(delta)), False)
    fused = lps + delta[ids]
    best = int(np.argmax(fused))
    outside = delta.copy()
    outside[ids] = -np.inf
    bound = base.floor + float(outside.max())
    return Choice(int(ids[best]), bool(np.isfinite(fused[best]) and bound < fused[best]))


def fused_scores(base: NextTokenScores, expert: np.ndarray, anti: np.ndarray, alpha: float,
                 base_vocab: int, allowed: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, unnormalised fused scores): the whole shared vocabulary, or with only
    a top-k base the base's top-k (the reference's approximation for API models)."""
    n = shared_size(base, expert, anti, base_vocab)
    delta = steer(expert, anti, alpha, n, allowed)
    if base.logprobs is not None:
        return np.arange(n), base.logprobs[:n] + delta
    ids, lps = _candidates(base, n)
    return ids, lps + delta[ids]


def log_distribution(base: NextTokenScores, expert: np.ndarray, anti: np.ndarray,
                     alpha: float, base_vocab: int) -> np.ndarray:
    """The fused log-probabilities (temperature 1, no constraint) as a row of length
    ``base_vocab``: -inf outside the support (a top-k base's candidates)."""
    ids, scores = fused_scores(base, expert, anti, alpha, base_vocab)
    m = float(scores.max())
    norm = m + float(np.log(np.exp(scores - m, dtype=np.float64).sum()))
    row = np.full(base_vocab, -np.inf, dtype=np.float32)
    row[ids] = scores - norm
    return row


def distribution(base: NextTokenScores, expert: np.ndarray, anti: np.ndarray, alpha: float,
                 base_vocab: int, temperature: float, top_p: float,
                 allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, probabilities) of the fused distribution after temperature and top-p.
    With only a top-k base this is the distribution restricted to the base's top-k (the
    reference's approximation for API models)."""
    ids, scores = fused_scores(base, expert, anti, alpha, base_vocab, allowed)
    z = scores / max(temperature, 1e-6)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        cut = int(np.searchsorted(cum, top_p)) + 1
        keep = order[:cut]
        ids, p = ids[keep], p[keep] / p[keep].sum()
    return ids, p


def draft_scores(expert: np.ndarray, anti: np.ndarray, alpha: float) -> np.ndarray:
    """The local stand-in for the fused scores when the base is far away: the anti-expert
    (the untuned small model) approximates the base, so ``anti + alpha*(expert - anti)``."""
    n = min(len(expert), len(anti))
    return anti[:n] + steer(expert, anti, alpha, n)
