"""What learning from traffic could reach on an unseen mix, offline: the ceiling of
bench/router_online.py's goal (held-out APGR ≥ 0.80 after 200 feedback events).

The same split as bench/router_online.py (the mix's prompts by a hash of their id:
30% held out, the rest the traffic, shuffled with seed 0; the base router trained on
every other type). Each row is a router scored on the held-out prompts of the mix:
- the base router alone (what serving starts from);
- the type oracle: each prompt scored by its type's mean gain on the traffic (a router
  that knew the task type of every prompt and nothing else);
- routers trained with *full* labels (both models' scores, which feedback never gives)
  on the first 200 traffic prompts and on all of them, mix only and mix + base rows;
- two per-model heads (P(answer right | prompt) for each model) trained on the partial
  labels a policy like the gateway's would collect from 200 events (30% cloud, 10%
  exploration), with and without the base rows.

    .venv/bin/python bench/router_ceiling.py [--mix arc,gsm8k,arithmetic,mbpp,mmlu]
"""

from __future__ import annotations

import argparse
import random

from common import ROOT, emit_json, machine, print_table  # noqa: I001

import numpy as np

from routers.base import make_embedder
from routers.embed import conversation_text
from routers.evaluate import summary
from routers.learned import KNNScorer, LogisticScorer
from routers.tools import _messages, read_jsonl, split, targets, task_type

LABELS = ROOT / "routers/data/broad-qwen0.5b-vs-1.5b.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mix", default="arc,gsm8k,arithmetic,mbpp,mmlu")
    ap.add_argument("--events", type=int, default=200)
    args = ap.parse_args()
    mix = args.mix.split(",")
    rows = read_jsonl(LABELS)
    emb = make_embedder("hashing-4096")

    def embed(rs: list[dict]) -> np.ndarray:
        return emb.embed([conversation_text(_messages(r)) for r in rs])

    base = [r for r in rows if task_type(r) not in mix]
    traffic, held = split([r for r in rows if task_type(r) in mix], 0.3)
    random.Random(0).shuffle(traffic)
    Xb, yb, Xt, Xh = embed(base), targets(base), embed(traffic), embed(held)
    score = {m: np.array([r[f"{m}_score"] for r in traffic]) for m in ("weak", "strong")}
    wh = np.array([r["weak_score"] for r in held])
    sh = np.array([r["strong_score"] for r in held])

    def apgr(p) -> float:
        return round(summary(np.asarray(p, float), wh, sh)["apgr"], 3)

    out: dict[str, float] = {}
    base_router = LogisticScorer.train(Xb, yb)
    out["base_only"] = apgr(base_router.score(Xh))
    gain = {t: np.mean([r["strong_score"] - r["weak_score"] for r in traffic
                        if task_type(r) == t]) for t in mix}
    out["type_oracle"] = apgr([gain[task_type(r)] for r in held])
    n = args.events
    for label, k in ((str(n), n), ("all", len(traffic))):
        y = targets(traffic[:k])
        both = np.concatenate([Xb, Xt[:k]])
        out[f"full_{label}_mix_only"] = apgr(LogisticScorer.train(Xt[:k], y).score(Xh))
        out[f"full_{label}_knn_mix_only"] = apgr(KNNScorer.train(Xt[:k], y).score(Xh))
        out[f"full_{label}_with_base"] = apgr(
            LogisticScorer.train(both, np.concatenate([yb, y])).score(Xh))
    # partial labels from a policy like the gateway's
    rng = np.random.default_rng(0)
    p = base_router.score(Xt[:n])
    strong = p >= np.quantile(p, 0.7)
    strong ^= rng.random(n) < np.where(strong, 0.1, 0.1 * 0.3 / 0.7)
    observed = np.where(strong, score["strong"][:n], score["weak"][:n])
    for with_base in (False, True):
        heads = {}
        for role, mask in (("weak", ~strong), ("strong", strong)):
            X, y, w = Xt[:n][mask], observed[mask], None
            if with_base:
                X = np.concatenate([Xb, X])
                y = np.concatenate([[r[f"{role}_score"] for r in base], y])
                w = np.r_[np.ones(len(base)), np.full(mask.sum(), 5.0)]
            heads[role] = LogisticScorer.train(X, y, weights=w)
        key = "two_heads_partial" + ("_with_base" if with_base else "")
        out[key] = apgr(heads["strong"].score(Xh) - heads["weak"].score(Xh))

    print(f"router_ceiling: {machine()}; mix {','.join(mix)}: {len(traffic)} traffic, "
          f"{len(held)} held out; base rows {len(base)}; embedder hashing-4096")
    print_table(["router (scored on the held-out prompts of the mix)", "APGR"],
                [[k, v] for k, v in out.items()])
    emit_json({"bench": "router_ceiling", "mix": mix, "events": n, **out})


if __name__ == "__main__":
    main()
