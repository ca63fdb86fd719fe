"""Which features carry a routing decision to a task type the router never saw?

Leave-one-task-type-out APGR (as ``bench/router_quality.py`` computes it) of the two
learned kinds on:

- ``hashing-4096``: the shipped embedder (hashed words and word pairs of the prompt);
- ``minilm-128``: all-MiniLM-L6-v2 sentence embeddings, the prompt's first 128 tokens
  (numpy forward from ``bench/router_embedders.py``; the wheel's files SHA-256 checked);
- ``hashing+minilm``: both, side by side;
- ``weak-answer``: the 0.5B model's own answer to the prompt, hashed, plus eight shape
  features (length, words, lines, digits, code, ...): what a cascade sees after answering
  locally, before deciding to escalate;
- ``prompt+weak-answer``: the shipped features and the answer's.

The answers come from the label file's ``.answers`` cache (``tandem router label``), so
the rows are those with a weak answer there (the HumanEval rows keep theirs elsewhere).
MiniLM embeddings are cached under the model cache (``--cache``), ~4 min to build on 2 cores.

    .venv/bin/python bench/router_features.py [--labels FILE] [--kinds classifier,knn]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import emit_json, machine, print_table  # noqa: I001

import numpy as np

from bench.router_embedders import MiniLM, fetch
from bench.router_quality import LABELS, loto
from routers.embed import HashingEmbedder, conversation_text
from routers.tools import _messages, read_jsonl


def weak_answers(labels: str) -> dict[str, str]:
    answers = {}
    with open(labels + ".answers") as f:
        for line in f:
            a = json.loads(line)
            if a.get("model") == "local":
                answers[a["id"]] = a["answer"]
    return answers


def answer_shape(answers: list[str]) -> np.ndarray:
    """Standardised shape of each answer: what a parser could tell without a reference."""
    def one(a: str) -> list[float]:
        w = a.split()
        return [np.log1p(len(a)), np.log1p(len(w)), "\n" in a, len(w) <= 3,
                any(c.isdigit() for c in a), "```" in a, a.strip().endswith((".", ")")),
                len(set(w)) / (len(w) + 1)]
    S = np.array([one(a) for a in answers], np.float32)
    return (S - S.mean(0)) / (S.std(0) + 1e-6)


def minilm(texts: list[str], cache: Path) -> np.ndarray:
    path = cache / f"minilm128-{len(texts)}.npy"
    if path.exists():
        return np.load(path)
    model = MiniLM(fetch(cache), 128)
    X = np.stack([model._embed_one(t) for t in texts])
    np.save(path, X)
    return X


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", default=LABELS)
    ap.add_argument("--kinds", default="classifier,knn")
    ap.add_argument("--cache", default=None, help="default: the model cache's datasets/")
    args = ap.parse_args()
    from clients.model_store import cache_dir

    cache = Path(args.cache) if args.cache else cache_dir().parent / "datasets"
    cache.mkdir(parents=True, exist_ok=True)
    answers = weak_answers(args.labels)
    rows = [r for r in read_jsonl(args.labels) if r.get("id") in answers]
    texts = [conversation_text(_messages(r)) for r in rows]
    said = [answers[r["id"]] for r in rows]
    H = HashingEmbedder(4096).embed(texts)
    M = minilm(texts, cache)
    A = np.hstack([HashingEmbedder(4096).embed(said), answer_shape(said)])
    features = {"hashing-4096": H, "minilm-128": M, "hashing+minilm": np.hstack([H, M]),
                "weak-answer": A, "prompt+weak-answer": np.hstack([H, A])}
    table, results = [], {}
    for name, X in features.items():
        for kind in args.kinds.split(","):
            per, pooled, _ = loto(kind, X, rows)
            mean = float(np.mean(list(per.values())))
            results[f"{name}/{kind}"] = {"loto": round(mean, 4), "loto_pooled": round(pooled, 4),
                                         "per_type": {t: round(v, 3) for t, v in per.items()}}
            table.append([name, kind, mean, pooled, min(per.values()), max(per.values())])
    print(f"router_features: {machine()}; {args.labels}: {len(rows)} prompts with a weak "
          "answer; LOTO = each type scored by a router trained on the others")
    print_table(["features", "router", "LOTO APGR", "LOTO pooled", "worst type", "best type"],
                table)
    best = max(results, key=lambda k: results[k]["loto"])
    emit_json({"bench": "router_features", "n": len(rows), "best": best,
               "best_loto_apgr": results[best]["loto"], "configs": results})


if __name__ == "__main__":
    main()
