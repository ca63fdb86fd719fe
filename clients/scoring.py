"""The token-scorer interface: next-token scores for a token prefix.

A second, narrower interface beside ``ChatClient`` (clients/base.py), offered only by
backends that can expose a model's output distribution: in-process llama.cpp (full
vocabulary, read from the context's logits), a remote OpenAI-compatible completions
endpoint (top-k log-probabilities, or the full vocabulary where the server allows it),
and the GPU engine. Composite clients (proxy-tuning, logit fusion) are built on it.

A ``ScoringSession`` holds one growing token sequence and whatever cache makes the next
call cheap (a KV cache slot locally; the server's prefix cache remotely): each call
feeds only the new tokens. ``truncate`` takes back tokens a verifier rejected.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


@dataclass
class NextTokenScores:
    """Log-probabilities of the next token at one position.

    Either ``logprobs`` holds the whole vocabulary (float32, log-softmax), or only the
    top-k are known (``top_ids``/``top_logprobs``, best first) and every other token's
    log-probability is at most ``floor`` (the k-th value: the bound that certified
    decoding relies on). ``bound`` sets the floor explicitly when the listed entries
    include a token ranked below the top-k (vLLM lists the scored token itself).
    """

    logprobs: np.ndarray | None = None
    top_ids: np.ndarray | None = None
    top_logprobs: np.ndarray | None = None
    bound: float | None = None

    @property
    def full(self) -> bool:
        return self.logprobs is not None

    @property
    def floor(self) -> float:
        if self.logprobs is not None:
            return float("-inf")
        if self.bound is not None:
            return self.bound
        assert self.top_logprobs is not None and len(self.top_logprobs)
        return float(self.top_logprobs.min())

    def get(self, token: int) -> float | None:
        """The log-probability of ``token``, or None when it is outside a known top-k."""
        if self.logprobs is not None:
            return float(self.logprobs[token])
        assert self.top_ids is not None and self.top_logprobs is not None
        hit = np.nonzero(self.top_ids == token)[0]
        return float(self.top_logprobs[hit[0]]) if len(hit) else None


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Normalised log-probabilities (float32) from raw logits."""
    x = np.asarray(logits, dtype=np.float32)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum(dtype=np.float64)).astype(np.float32))


class ScoringSession(abc.ABC):
    """One token sequence being scored; not shared between requests."""

    @abc.abstractmethod
    async def extend(self, tokens: list[int], positions: int = 1) -> list[NextTokenScores]:
        """Append ``tokens`` (the prompt on the first call) and return the scores of the
        next token after each of the last ``positions`` appended tokens, in order.
        ``positions`` > 1 scores a speculative draft in one call."""

    @abc.abstractmethod
    async def truncate(self, n_tokens: int) -> None:
        """Keep only the first ``n_tokens`` tokens (drop a rejected draft)."""

    @property
    @abc.abstractmethod
    def tokens(self) -> list[int]:
        """The tokens appended so far."""

    async def rescore_full(self, n_tokens: int) -> NextTokenScores:
        """Whole-vocabulary scores after the first ``n_tokens`` tokens, for a backend whose
        ``extend`` returns only a top-k (a remote base when certification fails)."""
        raise NotImplementedError(f"{type(self).__name__} has no whole-vocabulary rescoring")

    async def close(self) -> None:
        """Free the cache slot this session held."""


class StatelessSession(ScoringSession):
    """A session whose backend keeps no state between calls (a remote server re-sent the
    whole sequence, relying on its prefix cache): the tokens are just a list."""

    def __init__(self) -> None:
        self._tokens: list[int] = []

    @property
    def tokens(self) -> list[int]:
        return self._tokens

    async def extend(self, tokens: list[int], positions: int = 1) -> list[NextTokenScores]:
        self._tokens.extend(tokens)
        return await self.score(self._tokens, positions)

    @abc.abstractmethod
    async def score(self, tokens: list[int], positions: int) -> list[NextTokenScores]:
        """Scores after each of the last ``positions`` tokens of ``tokens``."""

    async def truncate(self, n_tokens: int) -> None:
        del self._tokens[n_tokens:]


class TokenScorer(abc.ABC):
    """A model that returns next-token scores for token prefixes."""

    #: True when ``extend`` returns whole-vocabulary log-probabilities.
    full_vocabulary: bool = True

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    @abc.abstractmethod
    def n_vocab(self) -> int:
        """Rows of the output layer (may exceed the tokenizer's real vocabulary)."""

    @abc.abstractmethod
    async def open(self) -> ScoringSession:
        """A new empty session (waits for a free cache slot when all are taken)."""

    async def extend_many(
        self, work: list[tuple[ScoringSession, list[int], int]]
    ) -> list[list[NextTokenScores]]:
        """``extend`` several sessions of this scorer at once. A backend that can decode
        them in one batch (two prompts on the same weights: expert and anti-expert)
        overrides this; the default runs them one after another."""
        return [await session.extend(tokens, positions) for session, tokens, positions in work]

    async def token_texts(self, ids: list[int]) -> list[bytes] | None:
        """The byte pieces of ``ids`` for the vocabulary check, or None when this
        backend cannot say (a remote server without a detokenize endpoint)."""
        return None
