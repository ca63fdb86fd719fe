"""Learned routers: MF math by hand, training that learns, checkpoints that refuse junk."""

from __future__ import annotations

import numpy as np
import pytest

from routers import checkpoint
from routers.embed import HashingEmbedder, conversation_text
from routers.learned import KNNScorer, LogisticScorer, MFScorer, sigmoid


def test_mf_score_matches_a_hand_computation():
    W = np.array([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]])  # k=2, d=3
    v_s, v_w = np.array([0.5, 2.0]), np.array([0.25, 1.0])
    w = np.array([2.0, -1.0])
    e = np.array([1.0, 2.0, 0.5])
    # W e = [1 + 1, -2 + 0.5] = [2, -1.5]; (v_s - v_w) = [0.25, 1]
    # product = [0.5, -1.5]; w . product = 1 + 1.5 = 2.5
    assert MFScorer(W, v_s, v_w, w).score(e) == pytest.approx(1 / (1 + np.exp(-2.5)))


def test_mf_training_gradient_matches_finite_differences():
    """One noiseless Adam-free step: the analytic BCE gradient equals a numeric one."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(8, 5)), rng.integers(0, 2, 8).astype(float)
    m = MFScorer(rng.normal(size=(3, 5)), rng.normal(size=3), rng.normal(size=3),
                 rng.normal(size=3), 0.1)

    def loss(model: MFScorer) -> float:
        p = np.clip(model.score(X), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    h = X @ m.W.T
    dv = m.v_s - m.v_w
    g = (sigmoid((h * dv) @ m.w + m.b) - y) / len(y)
    analytic_W = np.outer(g, m.w * dv).T @ X
    eps = 1e-6
    numeric = np.zeros_like(m.W)
    for idx in np.ndindex(*m.W.shape):
        plus, minus = m.W.copy(), m.W.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (loss(MFScorer(plus, m.v_s, m.v_w, m.w, m.b))
                        - loss(MFScorer(minus, m.v_s, m.v_w, m.w, m.b))) / (2 * eps)
    np.testing.assert_allclose(analytic_W, numeric, rtol=1e-4, atol=1e-8)


def _synthetic(n: int, seed: int):
    """Prompts whose need for the strong model is knowable: proofs and hard code need it."""
    rng = np.random.default_rng(seed)
    easy = ["say hello", "what is 2 plus 2", "name a colour", "translate cat to French",
            "reverse a list in python", "print hello world"]
    hard = ["prove that there are infinitely many primes",
            "implement a lock-free concurrent hash map in C++",
            "derive the backpropagation equations for an LSTM",
            "write a compiler pass for loop invariant code motion",
            "prove the correctness of Dijkstra's algorithm",
            "design a distributed consensus protocol tolerant to byzantine faults"]
    texts, labels = [], []
    for _ in range(n):
        strong = rng.random() < 0.5
        base = rng.choice(hard if strong else easy)
        texts.append(f"{base} {rng.choice(['please', 'thanks', 'now', ''])}".strip())
        labels.append(1.0 if strong else 0.0)
    emb = HashingEmbedder(512)
    return emb.embed(texts), np.array(labels), emb


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    pos, neg = scores[y == 1], scores[y == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


@pytest.mark.parametrize("train", [MFScorer.train, KNNScorer.train, LogisticScorer.train])
def test_learned_routers_beat_random_on_a_knowable_set(train):
    X, y, _ = _synthetic(300, 0)
    Xt, yt, _ = _synthetic(200, 1)
    scorer = train(X, y)
    assert _auc(np.asarray(scorer.score(Xt)), yt) > 0.9
    random_auc = _auc(np.random.default_rng(2).random(len(yt)), yt)
    assert random_auc < 0.6


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    X, y, emb = _synthetic(100, 3)
    scorer = LogisticScorer.train(X, y)
    path = tmp_path / "r.npz"
    checkpoint.save(path, scorer, emb.name, emb.dim)
    loaded, meta = checkpoint.load(path, emb.name, emb.dim)
    assert meta["kind"] == "classifier"
    np.testing.assert_allclose(loaded.score(X), scorer.score(X))
    with pytest.raises(checkpoint.CheckpointError, match="embedder"):
        checkpoint.load(path, "other-embedder", emb.dim)
    with pytest.raises(checkpoint.CheckpointError, match="dimension"):
        checkpoint.load(path, emb.name, 99)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(checkpoint.CheckpointError, match="not a Tandem router checkpoint"):
        checkpoint.load(bad)
    with pytest.raises(checkpoint.CheckpointError, match="no such"):
        checkpoint.load(tmp_path / "missing.npz")
    # Arrays that do not fit the kind: a classifier whose weights have the wrong length.
    checkpoint.save(tmp_path / "short.npz", LogisticScorer(np.zeros(3), 0.0), emb.name, emb.dim)
    with pytest.raises(checkpoint.CheckpointError, match="do not fit"):
        checkpoint.load(tmp_path / "short.npz")


def test_conversation_text_puts_latest_user_turn_first_and_is_bounded():
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": [{"type": "text", "text": "follow-up"}]}]
    text = conversation_text(messages)
    assert text.startswith("user: follow-up")
    assert "first question" in text and "be brief" in text
    long = [{"role": "user", "content": "x" * 10_000}] * 5
    assert len(conversation_text(long, budget_chars=4000)) <= 4000 + 10
