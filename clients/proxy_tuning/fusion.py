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


def steer(expert: np.ndarray, anti: np.ndarray, alpha: float, n: int) -> np.ndarray:
    """``alpha * (expert - anti)`` on the first ``n`` tokens."""
    return alpha * (expert[:n] - anti[:n])


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
           base_vocab: int) -> Choice:
    """The fused argmax; certified unless only a top-k is known and the bound fails."""
    n = shared_size(base, expert, anti, base_vocab)
    delta = steer(expert, anti, alpha, n)
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
    return Choice(int(ids[best]), bool(bound < fused[best]))


def distribution(base: NextTokenScores, expert: np.ndarray, anti: np.ndarray, alpha: float,
                 base_vocab: int, temperature: float, top_p: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, probabilities) of the fused distribution after temperature and top-p.
    With only a top-k base this is the distribution restricted to the base's top-k (the
    reference's approximation for API models)."""
    n = shared_size(base, expert, anti, base_vocab)
    delta = steer(expert, anti, alpha, n)
    if base.logprobs is not None:
        ids = np.arange(n)
        scores = base.logprobs[:n] + delta
    else:
        ids, lps = _candidates(base, n)
        scores = lps + delta[ids]
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
