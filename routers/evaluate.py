"""Routing quality as RouteLLM measures it (Ong et al. 2024, section 5).

For a cloud-call fraction f, the router sends its top-f share of prompts (by p_strong)
to the strong model. Quality(f) averages the scores of the answers so chosen;
PGR(f) = (quality(f) − weak) / (strong − weak), the share of the performance gap
recovered. APGR is the area under PGR over f in [0, 1]; CPT(x) the smallest f with
PGR ≥ x.
"""

from __future__ import annotations

import numpy as np


def pgr_curve(p_strong: np.ndarray, weak: np.ndarray, strong: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """(fractions 0..1 in steps of 1/n, PGR at each)."""
    n = len(p_strong)
    order = np.argsort(-p_strong, kind="stable")
    gain = (strong - weak)[order]
    quality = (weak.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / n
    lo, hi = weak.mean(), strong.mean()
    if hi - lo <= 1e-12:
        raise ValueError("the strong model is not better than the weak one on this set")
    return np.arange(n + 1) / n, (quality - lo) / (hi - lo)


def apgr(fractions: np.ndarray, pgr: np.ndarray) -> float:
    return float(np.trapezoid(pgr, fractions))


def cpt(fractions: np.ndarray, pgr: np.ndarray, target: float) -> float:
    """Smallest cloud fraction whose PGR reaches ``target`` (1.0 if never)."""
    hit = np.nonzero(pgr >= target - 1e-12)[0]
    return float(fractions[hit[0]]) if len(hit) else 1.0


def summary(p_strong: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> dict[str, float]:
    f, g = pgr_curve(np.asarray(p_strong, float), np.asarray(weak, float),
                     np.asarray(strong, float))
    return {"apgr": apgr(f, g), "cpt50": cpt(f, g, 0.5), "cpt80": cpt(f, g, 0.8)}


def threshold_for_fraction(scores: np.ndarray, cloud_fraction: float) -> float:
    """Calibration: the (1 − fraction) quantile of scores sends that fraction to the cloud."""
    return float(np.quantile(np.asarray(scores, float), 1.0 - cloud_fraction))


def curves(p_strong: np.ndarray, weak: np.ndarray, strong: np.ndarray,
           random_seeds: int = 200) -> dict:
    """Quality and PGR against the cloud fraction for the router, random routing (mean of
    ``random_seeds`` shuffles) and the oracle (knows each prompt's gain), plus their APGRs."""
    weak, strong = np.asarray(weak, float), np.asarray(strong, float)
    f, router = pgr_curve(np.asarray(p_strong, float), weak, strong)
    rand = np.mean([pgr_curve(np.random.default_rng(s).random(len(weak)), weak, strong)[1]
                    for s in range(random_seeds)], axis=0)
    oracle = pgr_curve(strong - weak, weak, strong)[1]
    lo, hi = weak.mean(), strong.mean()
    return {"fractions": f, "pgr": {"router": router, "random": rand, "oracle": oracle},
            "quality": {k: lo + v * (hi - lo) for k, v in
                        (("router", router), ("random", rand), ("oracle", oracle))},
            "weak": lo, "strong": hi, "random_apgr": apgr(f, rand),
            "oracle_apgr": apgr(f, oracle)}
