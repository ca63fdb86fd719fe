"""Offline router work behind ``tandem router …``: train, calibrate, evaluate.

Label files are JSONL, one prompt per line: ``{"prompt": str}`` or ``{"messages": [...]}``
plus ``weak_score`` and ``strong_score`` (quality of each model's answer, 0..1). The
training target is "the strong model was needed": strong_score > weak_score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from routers import checkpoint
from routers.base import make_embedder
from routers.embed import conversation_text
from routers.evaluate import summary, threshold_for_fraction
from routers.learned import SCORERS


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not JSON ({err})") from None
    return rows


def _messages(row: dict) -> list[dict]:
    if "messages" in row:
        return row["messages"]
    return [{"role": "user", "content": row["prompt"]}]


def embed_rows(rows: list[dict], embedder_name: str) -> np.ndarray:
    embedder = make_embedder(embedder_name)
    texts = [conversation_text(_messages(r)) for r in rows]
    batches = [embedder.embed(texts[i:i + 256])
               for i in tqdm(range(0, len(texts), 256), desc="embed", unit="batch")]
    return np.concatenate(batches) if batches else np.zeros((0, embedder.dim), np.float32)


def split(rows: list[dict], holdout: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic split; the held-out part is never trained on."""
    idx = np.random.default_rng(seed).permutation(len(rows))
    cut = int(round(len(rows) * (1 - holdout)))
    return [rows[i] for i in idx[:cut]], [rows[i] for i in idx[cut:]]


def train(kind: str, labels: str, out: str, embedder: str, holdout: float) -> dict:
    rows = read_jsonl(labels)
    train_rows, test_rows = split(rows, holdout)
    X = embed_rows(train_rows, embedder)
    y = np.array([float(r["strong_score"] > r["weak_score"]) for r in train_rows])
    scorer = SCORERS[kind].train(X, y)
    emb = make_embedder(embedder)
    result = {"kind": kind, "train": len(train_rows), "holdout": len(test_rows)}
    if test_rows:
        result.update(evaluate_scorer(scorer, test_rows, embedder))
    checkpoint.save(out, scorer, emb.name, emb.dim,
                    {"labels": str(labels), "holdout_fraction": holdout, **result})
    return result


def evaluate_scorer(scorer, rows: list[dict], embedder: str) -> dict:
    X = embed_rows(rows, embedder)
    weak = np.array([r["weak_score"] for r in rows], float)
    strong = np.array([r["strong_score"] for r in rows], float)
    out = summary(np.asarray(scorer.score(X)), weak, strong)
    rand = [summary(np.random.default_rng(s).random(len(rows)), weak, strong)["apgr"]
            for s in range(20)]
    out["random_apgr"] = float(np.mean(rand))
    return out


def evaluate(ckpt: str, labels: str) -> dict:
    _, meta = checkpoint.load(ckpt)
    scorer, _ = checkpoint.load(ckpt, meta["embedder"], meta["dim"])
    return {"kind": meta["kind"], **evaluate_scorer(scorer, read_jsonl(labels),
                                                    meta["embedder"])}


def calibrate(ckpt: str, prompts: str, cloud_fraction: float) -> float:
    _, meta = checkpoint.load(ckpt)
    scorer, _ = checkpoint.load(ckpt, meta["embedder"], meta["dim"])
    X = embed_rows(read_jsonl(prompts), meta["embedder"])
    return threshold_for_fraction(np.asarray(scorer.score(X)), cloud_fraction)
