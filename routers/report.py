"""How `tandem router eval` shows a router: a PGR table by cloud fraction and a PNG of
quality against the share of cloud calls, with the random and oracle lines.

matplotlib is optional (the ``plot`` extra): the gateway never needs it, and without it
the table is still printed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STEPS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _at(fractions: np.ndarray, values: np.ndarray, f: float) -> float:
    return float(np.interp(f, fractions, values))


def table(c: dict) -> list[str]:
    """One line per cloud fraction: PGR of the router, random and the oracle."""
    lines = [f"{'% cloud':>8} {'router':>8} {'random':>8} {'oracle':>8}"]
    for f in STEPS:
        vals = [_at(c["fractions"], c["pgr"][k], f) for k in ("router", "random", "oracle")]
        lines.append(f"{f:>8.0%} " + " ".join(f"{v:>8.3f}" for v in vals))
    return lines


def draw(c: dict, path: str | Path, title: str) -> bool:
    """Write the PNG; False (nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    pct = 100 * c["fractions"]
    for key, style in (("oracle", ":"), ("router", "-"), ("random", "--")):
        ax.plot(pct, c["quality"][key], style, label=key)
    ax.axhline(c["weak"], color="grey", lw=0.6)
    ax.axhline(c["strong"], color="grey", lw=0.6)
    ax.set_xlabel("% of requests sent to the strong (cloud) model")
    ax.set_ylabel("mean answer quality")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
