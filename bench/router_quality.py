"""Routing quality of every router kind and embedder, two ways, beside random and oracle:

- **random split**: the held-out split of the label file (a hash of each prompt's id,
  as ``tandem router train`` makes it): APGR, CPT(50%), CPT(80%);
- **leave-one-task-type-out** (LOTO): for each task type, a router trained on every
  other type scores that type's prompts, the traffic it has never seen. ``loto`` is the
  mean of the per-type APGRs (types whose strong model is no better are left out);
  ``loto_pooled`` is the APGR of all out-of-type scores pooled (a mix of unseen types).

The shipped default is chosen by LOTO first, then the random split. A table per type
(counts, weak and strong accuracy, the best configuration's LOTO APGR) follows.

    .venv/bin/python bench/router_quality.py [--labels FILE] [--embedders hashing-4096,...]
"""

from __future__ import annotations

import argparse
import time

from common import ROOT, emit_json, machine, print_table  # noqa: I001

import numpy as np

from routers.evaluate import curves, summary, threshold_for_fraction
from routers.learned import SCORERS
from routers.tools import embed_rows, out_of_fold, read_jsonl, split, targets, task_type

LABELS = str(ROOT / "routers/data/broad-qwen0.5b-vs-1.5b.jsonl")


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


def loto(kind: str, X: np.ndarray, rows: list[dict]) -> tuple[dict[str, float], float, np.ndarray]:
    """(per-type APGR of a router that never saw the type, pooled APGR, pooled scores)."""
    types = np.array([task_type(r) for r in rows])
    y = targets(rows)
    weak, strong = scores_of(rows)
    p = np.zeros(len(rows))
    per: dict[str, float] = {}
    for t in sorted(set(types)):
        out = types == t
        if len(set(y[~out])) < 2:  # one class (or nothing) left to learn from
            p[out] = y[~out].mean() if (~out).any() else 0.5
            continue
        p[out] = np.asarray(SCORERS[kind].train(X[~out], y[~out]).score(X[out]))
        if strong[out].mean() - weak[out].mean() > 1e-9:
            per[t] = summary(p[out], weak[out], strong[out])["apgr"]
    return per, summary(p, weak, strong)["apgr"], p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", default=LABELS)
    ap.add_argument("--embedders", default="hashing-4096,hashing-1024")
    ap.add_argument("--kinds", default=",".join(SCORERS))
    ap.add_argument("--holdout", type=float, default=0.2)
    args = ap.parse_args()
    rows_all = read_jsonl(args.labels)
    train_rows, test_rows = split(rows_all, args.holdout)
    weak_t, strong_t = scores_of(test_rows)
    table, results = [], {}
    for emb in args.embedders.split(","):
        X, Xt = embed_rows(train_rows, emb), embed_rows(test_rows, emb)
        Xall = embed_rows(rows_all, emb)
        y = targets(train_rows)
        for kind in args.kinds.split(","):
            t0 = time.perf_counter()
            scorer = SCORERS[kind].train(X, y)
            train_s = time.perf_counter() - t0
            p = np.asarray(scorer.score(Xt))
            s = summary(p, weak_t, strong_t)
            sent = float((p >= threshold_for_fraction(out_of_fold(kind, X, y), 0.3)).mean())
            per, pooled, _ = loto(kind, Xall, rows_all)
            mean_loto = float(np.mean(list(per.values()))) if per else float("nan")
            results[(kind, emb)] = {"apgr": s["apgr"], "cpt50": s["cpt50"],
                                    "cpt80": s["cpt80"], "loto": mean_loto,
                                    "loto_pooled": pooled, "per_type": per,
                                    "sent_at_30": sent, "train_s": train_s}
            table.append([kind, emb, s["apgr"], f"{s['cpt50']:.1%}", f"{s['cpt80']:.1%}",
                          mean_loto, pooled, f"{sent:.1%}", f"{train_s:.1f}"])
    c = curves(np.zeros(len(test_rows)), weak_t, strong_t, random_seeds=200)
    rand_f, rand_pgr = c["fractions"], c["pgr"]["random"]
    table.append(["random (200 seeds)", "-", c["random_apgr"],
                  f"{rand_f[np.argmax(rand_pgr >= 0.5)]:.1%}",
                  f"{rand_f[np.argmax(rand_pgr >= 0.8)]:.1%}", 0.5, 0.5, "30%", "-"])
    orc = summary(strong_t - weak_t, weak_t, strong_t)
    table.append(["oracle", "-", orc["apgr"], f"{orc['cpt50']:.1%}", f"{orc['cpt80']:.1%}",
                  "-", "-", "-", "-"])
    best = max(results, key=lambda k: (round(results[k]["loto"], 3), results[k]["apgr"]))
    types = sorted({task_type(r) for r in rows_all})
    print(f"router_quality: {machine()}; {args.labels}: {len(rows_all)} prompts of "
          f"{len(types)} types; random split {len(train_rows)} training, {len(test_rows)} "
          "held-out")
    print_table(["router", "embedder", "APGR", "CPT(50%)", "CPT(80%)", "LOTO APGR",
                 "LOTO pooled", "sent @30%", "train s"], table)
    print(f"\nper task type (LOTO APGR of {best[0]} on {best[1]}):")
    per_rows = []
    for t in types:
        sub = [r for r in rows_all if task_type(r) == t]
        w, s_ = scores_of(sub)
        need = float(np.mean(targets(sub)))
        per_rows.append([t, len(sub), f"{w.mean():.1%}", f"{s_.mean():.1%}", f"{need:.1%}",
                         results[best]["per_type"].get(t, float("nan"))])
    print_table(["type", "n", "weak acc", "strong acc", "strong needed", "LOTO APGR"],
                per_rows)
    b = results[best]
    emit_json({"bench": "router_quality", "labels": args.labels, "n": len(rows_all),
               "types": len(types), "held_out": len(test_rows),
               "best_kind": best[0], "best_embedder": best[1],
               "apgr": round(b["apgr"], 4), "cpt50": round(b["cpt50"], 4),
               "cpt80": round(b["cpt80"], 4), "loto_apgr": round(b["loto"], 4),
               "loto_pooled_apgr": round(b["loto_pooled"], 4),
               "random_apgr": round(c["random_apgr"], 4), "oracle_apgr": round(orc["apgr"], 4),
               "configs": {f"{k}/{e}": {m: round(v, 4) for m, v in r.items()
                                        if isinstance(v, float)}
                           for (k, e), r in results.items()}})


if __name__ == "__main__":
    main()
