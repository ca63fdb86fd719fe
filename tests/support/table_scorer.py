"""A deterministic in-memory token scorer for exact checks of the decoding schedules.

Its next-token logits are a pure function of (seed, whole prefix), so any schedule that
feeds the same tokens sees the same numbers, and a test can compute the fused argmax
independently. ``top_k`` makes it behave like a remote base that only reveals a top-k
(with ``rescore_full`` for the fallback). It counts calls like a remote server would.
"""

from __future__ import annotations

import hashlib

import numpy as np

from clients.scoring import NextTokenScores, StatelessSession, TokenScorer, log_softmax


def table_logits(seed: int, prefix: list[int], n_vocab: int, peak: float) -> np.ndarray:
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, prefix))}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    logits = rng.normal(0.0, 1.0, n_vocab).astype(np.float32)
    logits[int(rng.integers(n_vocab))] += peak  # a clear favourite, like a real model
    return logits


class TableSession(StatelessSession):
    def __init__(self, scorer: "TableScorer") -> None:
        super().__init__()
        self.scorer = scorer

    async def score(self, tokens: list[int], positions: int) -> list[NextTokenScores]:
        self.scorer.calls += 1
        n = len(tokens)
        return [self.scorer.scores(tokens[:end]) for end in range(n - positions + 1, n + 1)]

    async def rescore_full(self, n_tokens: int) -> NextTokenScores:
        self.scorer.calls += 1
        self.scorer.full_calls += 1
        return NextTokenScores(logprobs=self.scorer.row(self._tokens[:n_tokens]))


class TableScorer(TokenScorer):
    def __init__(self, name: str, seed: int, n_vocab: int = 64, peak: float = 3.0,
                 top_k: int | None = None, like: "TableScorer | None" = None,
                 noise: float = 1.0) -> None:
        """``like``: scores are that scorer's plus ``noise`` times this one's own table
        (a base that resembles the anti-expert, so drafts are often right)."""
        super().__init__(name)
        self.seed, self._n_vocab, self.peak, self.top_k = seed, n_vocab, peak, top_k
        self.like, self.noise = like, noise
        self.full_vocabulary = top_k is None
        self.calls = 0
        self.full_calls = 0

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    def row(self, prefix: list[int]) -> np.ndarray:
        own = table_logits(self.seed, prefix, self._n_vocab, self.peak)
        if self.like is not None:
            own = self.like.row(prefix) + self.noise * own
        return log_softmax(own)

    def scores(self, prefix: list[int]) -> NextTokenScores:
        row = self.row(prefix)
        if self.top_k is None:
            return NextTokenScores(logprobs=row)
        top = np.argsort(-row, kind="stable")[: self.top_k]
        return NextTokenScores(top_ids=top, top_logprobs=row[top])

    async def open(self) -> TableSession:
        return TableSession(self)
