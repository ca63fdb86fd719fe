"""The retrain gate's confidence (routers/learning.no_worse_confidence): a new checkpoint
serves only when "no worse" holds across resamples of the held-out labels, not on one
point estimate over a few dozen of them."""

from __future__ import annotations

import numpy as np

from routers.learning import no_worse_confidence, partial_apgr


class Fixed:
    """A scorer that gives each held-out label its preset score (X is the label index)."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def score(self, X: np.ndarray) -> np.ndarray:
        return self.scores[X[:, 0].astype(int)]


class Known:
    """An imputer whose labels carry both models' scores."""

    def __init__(self, weak: np.ndarray, strong: np.ndarray) -> None:
        self.weak, self.strong = weak, strong

    def full(self, labels: list[dict], dim: int):
        return np.arange(len(labels), dtype=float).reshape(-1, 1), self.weak, self.strong


def _labels(n: int, seed: int):
    rng = np.random.default_rng(seed)
    weak = (rng.random(n) < 0.4).astype(float)
    strong = np.maximum(weak, (rng.random(n) < 0.5).astype(float))
    return [{}] * n, Known(weak, strong), weak, strong


def test_the_same_router_and_a_clearly_better_one_pass_a_clearly_worse_one_does_not():
    gate, imputer, weak, strong = _labels(60, 1)
    oracle = Fixed(strong - weak + 0.01 * np.arange(60) / 60)  # sends exactly the gains
    inverse = Fixed(-(strong - weak))
    assert no_worse_confidence(inverse, inverse, gate, 1, imputer) == 1.0
    assert no_worse_confidence(oracle, inverse, gate, 1, imputer) == 1.0
    assert no_worse_confidence(inverse, oracle, gate, 1, imputer) == 0.0


def test_a_narrow_point_estimate_win_on_few_labels_is_not_enough():
    """Two routers that know nothing (independent random scores) on 31 labels: where one
    comes out ahead by less than 0.03 APGR, the resamples do not back it (a wide lead on
    the same labels may still pass: the gate judges these labels, not the routers)."""
    narrow = []
    for seed in range(20):
        gate, imputer, weak, strong = _labels(31, seed)
        rng = np.random.default_rng(100 + seed)
        a, b = Fixed(rng.random(31)), Fixed(rng.random(31))
        ours, theirs = (partial_apgr(r.scores, weak, strong) for r in (a, b))
        if ours is not None and theirs is not None and 0 <= ours - theirs < 0.03:
            narrow.append(no_worse_confidence(a, b, gate, 1, imputer))
    assert len(narrow) >= 3 and max(narrow) < 0.8, narrow
