"""Routing quality of every router kind on the held-out split, side by side with random
and the oracle: APGR, CPT(50%), CPT(80%) (RouteLLM's definitions), plus the share of
held-out prompts a calibrated ``cloud_fraction`` of 30% really sends to the cloud.

Each kind is trained here on the training split (the split is a hash of each prompt's
id, so the held-out prompts are never trained on), exactly as ``tandem router train``
does. ``cv_apgr`` is the 5-fold cross-validated APGR on the training rows alone: the
figure a kind should be chosen by, since the held-out set is small.

    .venv/bin/python bench/router_quality.py [--labels FILE] [--embedder hashing-4096]
"""

from __future__ import annotations

import argparse
import time

from common import emit_json, machine, print_table  # noqa: I001

import numpy as np

from routers.evaluate import curves, summary, threshold_for_fraction
from routers.learned import SCORERS
from routers.tools import embed_rows, out_of_fold, read_jsonl, split, targets

LABELS = "routers/data/humaneval-qwen0.5b-vs-1.5b.jsonl"


def scores_of(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([r["weak_score"] for r in rows], float),
            np.array([r["strong_score"] for r in rows], float))


def cv_apgr(kind: str, X: np.ndarray, rows: list[dict], repeats: int) -> float:
    """Mean APGR of out-of-fold scores over ``repeats`` shuffles of the training rows."""
    y, (weak, strong) = targets(rows), scores_of(rows)
    out = []
    for rep in range(repeats):
        p = np.zeros(len(y))
        idx = np.random.default_rng(100 + rep).permutation(len(y))
        for part in np.array_split(idx, 5):
            rest = np.setdiff1d(idx, part)
            p[part] = SCORERS[kind].train(X[rest], y[rest]).score(X[part])
        out.append(summary(p, weak, strong)["apgr"])
    return float(np.mean(out))


def calibration_miss(kind: str, X: np.ndarray, y: np.ndarray, splits: int,
                     fraction: float = 0.3) -> tuple[float, float]:
    """Mean and s.d. of (share sent − fraction) on the unseen 40% of ``splits`` random
    60/40 splits of all rows, thresholds from out-of-fold scores of the 60%: whether the
    calibration is biased, apart from the sampling noise of one small split."""
    miss = []
    for s in range(splits):
        idx = np.random.default_rng(s).permutation(len(y))
        tr, te = idx[: int(0.6 * len(y))], idx[int(0.6 * len(y)):]
        t = threshold_for_fraction(out_of_fold(kind, X[tr], y[tr]), fraction)
        sent = np.asarray(SCORERS[kind].train(X[tr], y[tr]).score(X[te])) >= t
        miss.append(float(sent.mean()) - fraction)
    return float(np.mean(miss)), float(np.std(miss))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", default=LABELS)
    ap.add_argument("--embedder", default="hashing-4096")
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--cv-repeats", type=int, default=3)
    ap.add_argument("--calibration-splits", type=int, default=0,
                    help="also measure the calibration's bias over N random splits")
    args = ap.parse_args()
    train_rows, test_rows = split(read_jsonl(args.labels), args.holdout)
    X, Xt = embed_rows(train_rows, args.embedder), embed_rows(test_rows, args.embedder)
    y = targets(train_rows)
    weak, strong = scores_of(test_rows)
    rows, results = [], {}
    for kind in SCORERS:
        t0 = time.perf_counter()
        scorer = SCORERS[kind].train(X, y)
        train_s = time.perf_counter() - t0
        p = np.asarray(scorer.score(Xt))
        s = summary(p, weak, strong)
        sent = float((p >= threshold_for_fraction(out_of_fold(kind, X, y), 0.3)).mean())
        cv = cv_apgr(kind, X, train_rows, args.cv_repeats)
        results[kind] = s
        rows.append([kind, s["apgr"], f"{s['cpt50']:.1%}", f"{s['cpt80']:.1%}",
                     f"{sent:.1%}", cv, f"{train_s:.1f}"])
    c = curves(np.zeros(len(test_rows)), weak, strong, random_seeds=200)
    rand_f, rand_pgr = c["fractions"], c["pgr"]["random"]
    rows.append(["random (200 seeds)", c["random_apgr"],
                 f"{rand_f[np.argmax(rand_pgr >= 0.5)]:.1%}",
                 f"{rand_f[np.argmax(rand_pgr >= 0.8)]:.1%}", "30%", 0.5, "-"])
    orc = summary(strong - weak, weak, strong)
    rows.append(["oracle", orc["apgr"], f"{orc['cpt50']:.1%}", f"{orc['cpt80']:.1%}",
                 "-", "-", "-"])
    best = max(results, key=lambda k: results[k]["apgr"])
    print(f"router_quality: {machine()}; embedder {args.embedder}; {args.labels}: "
          f"{len(train_rows)} training, {len(test_rows)} held-out prompts")
    print_table(["router", "APGR", "CPT(50%)", "CPT(80%)", "sent @30%", "cv APGR",
                 "train s"], rows)
    if args.calibration_splits:
        every = train_rows + test_rows
        Xa, ya = np.concatenate([X, Xt]), targets(every)
        print(f"calibration at 30% over {args.calibration_splits} random 60/40 splits of all "
              f"{len(every)} rows (sent - 30%, mean ± s.d.):")
        for kind in SCORERS:
            mean, sd = calibration_miss(kind, Xa, ya, args.calibration_splits)
            print(f"  {kind:>10}: {mean:+.1%} ± {sd:.1%}")
    emit_json({"bench": "router_quality", "embedder": args.embedder,
               "held_out": len(test_rows), "best_kind": best,
               "apgr": round(results[best]["apgr"], 4),
               "cpt50": round(results[best]["cpt50"], 4),
               "cpt80": round(results[best]["cpt80"], 4),
               "random_apgr": round(c["random_apgr"], 4),
               "oracle_apgr": round(orc["apgr"], 4),
               **{f"apgr_{k}": round(v["apgr"], 4) for k, v in results.items()}})


if __name__ == "__main__":
    main()
