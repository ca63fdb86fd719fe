"""Proxy-tuning arithmetic and decoding schedules, checked exactly on deterministic
in-memory scorers (tests/support/table_scorer.py): the fused choice against an
independent computation, every schedule against the per-token reference, the top-k
certificate's soundness, and sampling against the fused distribution."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clients.proxy_tuning import fusion
from clients.proxy_tuning.decoder import Parts, Prompts, ProxyDecoder, Sampling
from clients.scoring import NextTokenScores, log_softmax
from tests.support.table_scorer import TableScorer

ALPHA = 1.5


def reference_greedy(base: TableScorer, expert: TableScorer, anti: TableScorer,
                     prompts: Prompts, n: int) -> list[int]:
    """Greedy proxy-tuning computed directly from the tables, one token at a time."""
    out: list[int] = []
    for _ in range(n):
        b = base.row(prompts.base + out)
        e = expert.row(prompts.expert + out)
        a = anti.row(prompts.anti + out)
        out.append(int(np.argmax(b + ALPHA * (e - a))))
    return out


def triple(top_k: int | None = None, noise: float = 0.6):
    anti = TableScorer("anti", seed=2)
    expert = TableScorer("expert", seed=1)
    base = TableScorer("base", seed=3, top_k=top_k, like=anti, noise=noise)
    return base, expert, anti


PROMPTS = Prompts(base=[5, 6, 7], expert=[9, 5, 6, 7], anti=[5, 6, 7])


def decode(parts: Parts, n: int, sampling: Sampling | None = None) -> list[int]:
    async def run() -> list[int]:
        out = []
        gen = ProxyDecoder(parts).generate(PROMPTS, sampling or Sampling(0.0, max_tokens=n))
        async for tok in gen:
            out.append(tok)
            if len(out) == n:
                break
        await gen.aclose()
        return out

    return asyncio.run(run())


def test_fused_greedy_matches_hand_computation():
    base = log_softmax(np.array([2.0, 1.0, 0.0, -1.0], dtype=np.float32))
    expert = log_softmax(np.array([0.0, 3.0, 0.0, 0.0], dtype=np.float32))
    anti = log_softmax(np.array([0.0, 0.0, 0.0, 0.0], dtype=np.float32))
    # base favours 0; expert - anti adds 3 to token 1 (minus a shared constant)
    assert fusion.greedy(NextTokenScores(logprobs=base), expert, anti, 1.0, 4).token == 1
    assert fusion.greedy(NextTokenScores(logprobs=base), expert, anti, 0.2, 4).token == 0
    fused = fusion.fused_full(base, expert, anti, 1.0)
    np.testing.assert_allclose(fused, base + expert - anti, rtol=0, atol=0)


def test_vocabularies_are_cut_to_the_shared_range():
    base = np.zeros(6, dtype=np.float32)
    expert = np.array([0, 0, 0, 0, 9, 9, 9, 9], dtype=np.float32)  # padded rows beyond 6
    anti = np.zeros(8, dtype=np.float32)
    assert fusion.fused_full(base, expert, anti, 1.0).shape == (6,)
    assert fusion.greedy(NextTokenScores(logprobs=base), expert, anti, 1.0, 6).token == 4


def test_certificate_is_sound_and_usually_succeeds():
    rng = np.random.default_rng(0)
    certified = 0
    for _ in range(2000):
        n, k = 50, 5
        base = log_softmax(rng.normal(0, 2, n).astype(np.float32))
        e = log_softmax(rng.normal(0, 1, n).astype(np.float32))
        a = log_softmax(rng.normal(0, 1, n).astype(np.float32))
        top = np.argsort(-base)[:k]
        choice = fusion.greedy(NextTokenScores(top_ids=top, top_logprobs=base[top]),
                               e, a, 0.5, n)
        truth = int(np.argmax(base + 0.5 * (e - a)))
        if choice.certified:
            certified += 1
            assert choice.token == truth
    assert certified > 500  # the bound is not vacuous


def test_lockstep_follows_the_fused_argmax_token_for_token():
    base, expert, anti = triple()
    got = decode(Parts(base, expert, anti, ALPHA), 40)
    assert got == reference_greedy(base, expert, anti, PROMPTS, 40)


@pytest.mark.parametrize("schedule,top_k", [("lockstep", 4), ("speculative", None),
                                            ("speculative", 4)])
def test_remote_schedules_equal_the_reference(schedule, top_k):
    base, expert, anti = triple(top_k=top_k)
    parts = Parts(base, expert, anti, ALPHA, schedule=schedule, draft_tokens=4)
    got = decode(parts, 60)
    assert got == reference_greedy(base, expert, anti, PROMPTS, 60)
    if schedule == "speculative":
        # one base call per round; rounds yield several tokens when drafts are right
        assert parts.stats.accepted > 0
        assert base.calls - base.full_calls < 60
    if top_k is not None:
        assert parts.stats.uncertified == base.full_calls  # every doubt was rescored


def test_approximate_mode_counts_what_it_could_not_prove():
    base, expert, anti = triple(top_k=2, noise=3.0)
    parts = Parts(base, expert, anti, ALPHA, on_uncertified="approximate")
    decode(parts, 40)
    assert base.full_calls == 0
    assert parts.stats.uncertified > 0


def _chi_square_ok(counts: np.ndarray, probs: np.ndarray) -> bool:
    """Pearson's test at about the 0.001 level (Wilson-Hilferty quantile)."""
    total = counts.sum()
    keep = probs * total >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(probs[keep] * total, probs[~keep].sum() * total)
    if expected[-1] < 5:
        observed, expected = observed[:-1], expected[:-1]
    stat = float(((observed - expected) ** 2 / expected).sum())
    dof = len(observed) - 1
    z = 3.09
    limit = dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3
    return stat < limit


@pytest.mark.parametrize("schedule", ["lockstep", "speculative"])
def test_sampling_follows_the_fused_distribution(schedule):
    base, expert, anti = triple(noise=0.3)
    b = base.row(PROMPTS.base)
    e = expert.row(PROMPTS.expert)
    a = anti.row(PROMPTS.anti)
    temperature = 0.8
    z = (b + ALPHA * (e - a)) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    counts = np.zeros(len(probs))
    for seed in range(3000):
        parts = Parts(base, expert, anti, ALPHA, schedule=schedule, draft_tokens=3)
        tok = decode(parts, 1, Sampling(temperature, seed=seed, max_tokens=8))[0]
        counts[tok] += 1
    assert _chi_square_ok(counts, probs)
    # and a wrong distribution is rejected by the same test (it can fail)
    assert not _chi_square_ok(counts, np.roll(probs, 1))
