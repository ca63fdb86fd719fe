"""The retrain gate's confidence (routers/learning.no_worse_confidence): a new checkpoint
serves only when "no worse" holds across resamples of the held-out labels, not on one
point estimate over a few dozen of them."""

from __future__ import annotations

import numpy as np

from routers.learning import no_worse_confidence, partial_apgr


def _labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Both models' scores on ``n`` held-out labels."""
    rng = np.random.default_rng(seed)
    weak = (rng.random(n) < 0.4).astype(float)
    strong = np.maximum(weak, (rng.random(n) < 0.5).astype(float))
    return weak, strong


def test_the_same_router_and_a_clearly_better_one_pass_a_clearly_worse_one_does_not():
    weak, strong = _labels(60, 1)
    oracle = strong - weak + 0.01 * np.arange(60) / 60  # sends exactly the gains
    inverse = -(strong - weak)
    assert no_worse_confidence(inverse, inverse, weak, strong) == 1.0
    assert no_worse_confidence(oracle, inverse, weak, strong) == 1.0
    assert no_worse_confidence(inverse, oracle, weak, strong) == 0.0


def test_a_narrow_point_estimate_win_on_few_labels_is_not_enough():
    """Two routers that know nothing (independent random scores) on 31 labels: where one
    comes out ahead by less than 0.03 APGR, the resamples do not back it (a wide lead on
    the same labels may still pass: the gate judges these labels, not the routers)."""
    narrow = []
    for seed in range(20):
        weak, strong = _labels(31, seed)
        rng = np.random.default_rng(100 + seed)
        a, b = rng.random(31), rng.random(31)
        ours, theirs = (partial_apgr(p, weak, strong) for p in (a, b))
        if ours is not None and theirs is not None and 0 <= ours - theirs < 0.03:
            narrow.append(no_worse_confidence(a, b, weak, strong))
    assert len(narrow) >= 3 and max(narrow) < 0.8, narrow
