"""The proxy-tuning token loop: three scorers, one fused choice per generated token.

Two schedules, the same tokens under greedy decoding:

- ``lockstep``: every step feeds the chosen token to base, expert and anti-expert and
  reads their next-token scores (the reference's schedule; what a local base uses).
  With a remote base that only returns a top-k, ``certified`` accepts the best fused
  candidate when the bound proves it (fusion.greedy), otherwise re-asks the base for the
  whole vocabulary (or keeps the top-k choice when configured ``approximate``).
- ``speculative``: the expert and anti-expert draft k tokens locally (``draft_scores``),
  one base call scores all k positions plus the one after, and the longest prefix that
  equals the fused argmax is kept, plus the fused token at the first disagreement. Each
  base call yields at least one token; k adapts to the acceptance.
  Sampling uses rejection sampling against the draft distribution, which leaves the
  fused distribution exactly as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import numpy as np

from clients.proxy_tuning import fusion
from clients.scoring import NextTokenScores, ScoringSession, TokenScorer

MAX_DRAFT = 16


@dataclass
class DecodeStats:
    """Counters a benchmark reads (and the gateway may expose)."""

    tokens: int = 0
    base_calls: int = 0
    full_calls: int = 0
    uncertified: int = 0
    drafted: int = 0
    accepted: int = 0

    def add(self, other: "DecodeStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 256

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Prompts:
    """Each role's prompt as token ids (the roles may see different templates)."""

    base: list[int]
    expert: list[int]
    anti: list[int]


@dataclass
class Parts:
    base: TokenScorer
    expert: TokenScorer
    anti: TokenScorer
    alpha: float
    schedule: str = "lockstep"  # or "speculative"
    on_uncertified: str = "full"  # or "approximate"
    draft_tokens: int = 4
    stats: DecodeStats = field(default_factory=DecodeStats)


class _LocalPair:
    """Expert and anti-expert sessions, decoded in one batch when they share weights."""

    def __init__(self, parts: Parts, expert: ScoringSession, anti: ScoringSession) -> None:
        self.parts, self.expert, self.anti = parts, expert, anti
        self.generated = 0
        self.prompt_len = (0, 0)

    async def extend(self, e_tokens: list[int], a_tokens: list[int], positions: int = 1
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        p = self.parts
        if p.expert is p.anti:
            e, a = await p.expert.extend_many([(self.expert, e_tokens, positions),
                                               (self.anti, a_tokens, positions)])
        else:
            e = await self.expert.extend(e_tokens, positions)
            a = await self.anti.extend(a_tokens, positions)
        return [s.logprobs for s in e], [s.logprobs for s in a]

    async def keep(self, generated: int) -> None:
        """Forget generated tokens past ``generated`` (a rejected draft)."""
        await self.expert.truncate(self.prompt_len[0] + generated)
        await self.anti.truncate(self.prompt_len[1] + generated)


class ProxyDecoder:
    def __init__(self, parts: Parts) -> None:
        self.p = parts
        self._constraint = None
        self._on_step: Callable[[int, np.ndarray], None] | None = None

    async def generate(self, prompts: Prompts, sampling: Sampling, constraint=None,
                       on_step: Callable[[int, np.ndarray], None] | None = None
                       ) -> AsyncIterator[int]:
        """Token ids of the proxy-tuned continuation (the caller stops when it has enough).

        ``constraint`` (a GrammarConstraint) masks the fused distribution at every step;
        ``on_step(token, fused log-probabilities)`` is told each token's distribution
        (for logprobs). Either runs the lockstep schedule: a speculative draft would have
        to rewind the grammar and has no fused row for the tokens it accepts."""
        p = self.p
        self._constraint, self._on_step = constraint, on_step
        sessions: list[ScoringSession] = []
        try:
            for scorer in (p.base, p.expert, p.anti):
                sessions.append(await scorer.open())
            base, pair = sessions[0], _LocalPair(p, sessions[1], sessions[2])
            pair.prompt_len = (len(prompts.expert), len(prompts.anti))
            rng = np.random.default_rng(sampling.seed)
            run = (self._speculative if p.schedule == "speculative" and constraint is None
                   and on_step is None else self._lockstep)
            async for token in run(base, pair, prompts, sampling, rng):
                yield token
        finally:
            for s in sessions:
                await s.close()

    # -- choosing a token ---------------------------------------------------------------
    async def _step(self, base: ScoringSession, b: NextTokenScores, e: np.ndarray,
                    a: np.ndarray, sampling: Sampling, rng) -> int:
        """One fused choice, under the constraint if there is one, reported to on_step."""
        c, n = self._constraint, self.p.base.n_vocab
        if c is None:
            token, b = await self._choose(base, b, e, a, sampling, rng)
        elif sampling.greedy:
            token, b = await self._choose(base, b, e, a, sampling, rng)
            if not c.allows(token):  # the unconstrained best is allowed: it is the best
                # b is the whole vocabulary if the first choice needed it: not asked twice
                token, b = await self._choose(base, b, e, a, sampling, rng, c.mask(n))
        else:
            allowed = c.mask(n)
            if not b.full and not allowed[b.top_ids[b.top_ids < n]].any():
                b = await self._rescore_full(base, len(base.tokens))
            token, b = await self._choose(base, b, e, a, sampling, rng, allowed)
        if c is not None:
            c.accept(token)
        if self._on_step is not None:
            self._on_step(token, fusion.log_distribution(b, e, a, self.p.alpha, n))
        return token

    async def _choose(self, base: ScoringSession, b: NextTokenScores, e: np.ndarray,
                      a: np.ndarray, sampling: Sampling, rng,
                      allowed: np.ndarray | None = None) -> tuple[int, NextTokenScores]:
        """The token, and the base scores it was chosen from (whole vocabulary when the
        top-k could not prove the choice)."""
        p = self.p
        if not sampling.greedy:
            ids, probs = fusion.distribution(b, e, a, p.alpha, p.base.n_vocab,
                                             sampling.temperature, sampling.top_p, allowed)
            return int(rng.choice(ids, p=probs)), b
        choice = fusion.greedy(b, e, a, p.alpha, p.base.n_vocab, allowed)
        if choice.certified:
            return choice.token, b
        p.stats.uncertified += 1
        if p.on_uncertified == "approximate" and allowed is None:
            return choice.token, b
        full = await self._rescore_full(base, len(base.tokens))
        return fusion.greedy(full, e, a, p.alpha, p.base.n_vocab, allowed).token, full

    async def _rescore_full(self, base: ScoringSession, n_tokens: int) -> NextTokenScores:
        """The base's whole-vocabulary scores after its first ``n_tokens`` tokens."""
        self.p.stats.base_calls += 1
        self.p.stats.full_calls += 1
        return await base.rescore_full(n_tokens)

    # -- schedules ------------------------------------------------------------------------
    async def _lockstep(self, base, pair: _LocalPair, prompts: Prompts, sampling: Sampling,
                        rng) -> AsyncIterator[int]:
        p = self.p
        feed_b, feed_e, feed_a = prompts.base, prompts.expert, prompts.anti
        while True:
            e, a = await pair.extend(feed_e, feed_a)
            p.stats.base_calls += 1
            b = (await base.extend(feed_b))[0]
            token = await self._step(base, b, e[0], a[0], sampling, rng)
            p.stats.tokens += 1
            yield token
            feed_b = feed_e = feed_a = [token]

    async def _speculative(self, base, pair: _LocalPair, prompts: Prompts,
                           sampling: Sampling, rng) -> AsyncIterator[int]:
        p = self.p
        k = max(1, min(p.draft_tokens, MAX_DRAFT))
        e, a = await pair.extend(prompts.expert, prompts.anti)
        e_next, a_next = e[0], a[0]
        feed_b = list(prompts.base)
        generated = 0
        while True:
            k = max(1, min(k, sampling.max_tokens - generated))
            # Draft k tokens with the local pair; keep their scores at every position.
            draft: list[int] = []
            e_rows, a_rows, q_rows = [e_next], [a_next], []
            for i in range(k):
                q = fusion.draft_scores(e_rows[-1], a_rows[-1], p.alpha)
                if sampling.greedy:
                    tok = int(np.argmax(q))
                else:
                    ids, probs = _tempered(q, sampling)
                    q_rows.append((ids, probs))
                    tok = int(rng.choice(ids, p=probs))
                draft.append(tok)
                e, a = await pair.extend([tok], [tok])
                e_rows.append(e[0])
                a_rows.append(a[0])
            p.stats.drafted += k
            # One base call scores every draft position and the one after.
            p.stats.base_calls += 1
            b_rows = await base.extend(feed_b + draft, positions=k + 1)
            accepted, token = await self._verify(base, draft, b_rows, e_rows, a_rows, q_rows,
                                                 sampling, rng, len(base.tokens) - k)
            p.stats.accepted += accepted
            for tok in draft[:accepted] + [token]:
                p.stats.tokens += 1
                generated += 1
                yield tok
            # The local pair and the base now hold the accepted prefix of the draft; the
            # corrected (or bonus) token is fed at the start of the next round.
            await pair.keep(generated - 1)
            await base.truncate(len(base.tokens) - k + accepted)
            e, a = await pair.extend([token], [token])
            e_next, a_next = e[0], a[0]
            feed_b = [token]
            k = min(MAX_DRAFT, k + 2) if accepted == k else max(1, accepted + 1)

    async def _verify(self, base, draft, b_rows, e_rows, a_rows, q_rows, sampling, rng,
                      draft_start: int) -> tuple[int, int]:
        """(accepted draft tokens, the token that follows them)."""
        p = self.p
        for i, b in enumerate(b_rows):
            last = i == len(draft)
            if sampling.greedy:
                choice = fusion.greedy(b, e_rows[i], a_rows[i], p.alpha, p.base.n_vocab)
                token = choice.token
                if not choice.certified:
                    p.stats.uncertified += 1
                    if p.on_uncertified != "approximate":
                        full = await self._rescore_full(base, draft_start + i)
                        token = fusion.greedy(full, e_rows[i], a_rows[i], p.alpha,
                                              p.base.n_vocab).token
                if last or token != draft[i]:
                    return i, token
                continue
            ids, probs = fusion.distribution(b, e_rows[i], a_rows[i], p.alpha,
                                             p.base.n_vocab, sampling.temperature,
                                             sampling.top_p)
            if last:
                return i, int(rng.choice(ids, p=probs))
            q_ids, q_probs = q_rows[i]
            tok = draft[i]
            p_x = _prob_of(ids, probs, tok)
            q_x = _prob_of(q_ids, q_probs, tok)
            if q_x > 0 and rng.random() < min(1.0, p_x / q_x):
                continue
            residual = _residual(ids, probs, q_ids, q_probs)
            return i, int(rng.choice(residual[0], p=residual[1]))
        raise AssertionError("unreachable: the last position always returns")


def _tempered(scores: np.ndarray, sampling: Sampling) -> tuple[np.ndarray, np.ndarray]:
    z = scores / max(sampling.temperature, 1e-6)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    ids = np.arange(len(probs))
    if sampling.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cut = int(np.searchsorted(np.cumsum(probs[order]), sampling.top_p)) + 1
        keep = order[:cut]
        ids, probs = ids[keep], probs[keep] / probs[keep].sum()
    return ids, probs


def _prob_of(ids: np.ndarray, probs: np.ndarray, token: int) -> float:
    hit = np.nonzero(ids == token)[0]
    return float(probs[hit[0]]) if len(hit) else 0.0


def _residual(ids, probs, q_ids, q_probs) -> tuple[np.ndarray, np.ndarray]:
    """norm(max(0, p - q)) on p's support: the distribution to sample after a rejection."""
    q_on_p = np.zeros(len(ids))
    pos = {int(t): j for j, t in enumerate(ids)}
    for t, qp in zip(q_ids, q_probs):
        j = pos.get(int(t))
        if j is not None:
            q_on_p[j] = qp
    r = np.maximum(probs - q_on_p, 0.0)
    total = r.sum()
    if total <= 0:
        return ids, probs
    return ids, r / total
