"""Offline router work behind ``tandem router …``: train, calibrate, evaluate.

Label files are JSONL, one prompt per line: ``{"prompt": str}`` or ``{"messages": [...]}``
plus ``weak_score`` and ``strong_score`` (quality of each model's answer, 0..1). The
training target is "the strong model was needed": strong_score > weak_score.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from routers import checkpoint
from routers.base import make_embedder
from routers.embed import conversation_text
from routers.evaluate import curves, summary, threshold_for_fraction
from routers.learned import SCORERS

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "broad-classifier.npz"


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
    batches = [embedder.embed(texts[i:i + 64])
               for i in tqdm(range(0, len(texts), 64), desc="embed", unit="batch")]
    return np.concatenate(batches) if batches else np.zeros((0, embedder.dim), np.float32)


def task_type(row: dict) -> str:
    """A label row's task type: its ``type``, else its id's prefix (``HumanEval/3``)."""
    if row.get("type"):
        return str(row["type"])
    rid = str(row.get("id", ""))
    for sep in (":", "/"):
        if sep in rid:
            return rid.split(sep, 1)[0].lower()
    return "unknown"


def _row_key(row: dict) -> str:
    return str(row.get("id") or json.dumps(_messages(row), sort_keys=True))


def split(rows: list[dict], holdout: float) -> tuple[list[dict], list[dict]]:
    """Held-out = rows whose id (or text) hashes below ``holdout``: stable when the label
    file is reordered or grows, so a held-out prompt is never trained on later."""
    def bucket(row: dict) -> float:
        digest = hashlib.blake2b(_row_key(row).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64

    train_rows = [r for r in rows if bucket(r) >= holdout]
    return train_rows, [r for r in rows if bucket(r) < holdout]


def targets(rows: list[dict]) -> np.ndarray:
    return np.array([float(r["strong_score"] > r["weak_score"]) for r in rows])


def out_of_fold(kind: str, X: np.ndarray, y: np.ndarray, folds: int = 5) -> np.ndarray:
    """Each prompt scored by a scorer trained without it: the scores unseen traffic will
    get, so their quantiles calibrate a cloud fraction (in-sample scores are overfit)."""
    scores = np.zeros(len(y))
    parts = np.array_split(np.random.default_rng(0).permutation(len(y)), min(folds, len(y)))
    for part in tqdm(parts, desc="calibrate", unit="fold"):
        rest = np.setdiff1d(np.arange(len(y)), part)
        if len(set(y[rest])) < 2:  # one class only: nothing to learn from, score the prior
            scores[part] = y[rest].mean() if len(rest) else 0.5
            continue
        scores[part] = SCORERS[kind].train(X[rest], y[rest]).score(X[part])
    return scores


def train(kind: str, labels: str, out: str, embedder: str, holdout: float) -> dict:
    rows = read_jsonl(labels)
    train_rows, test_rows = split(rows, holdout)
    X, y = embed_rows(train_rows, embedder), targets(train_rows)
    scorer = SCORERS[kind].train(X, y)
    calibration = out_of_fold(kind, X, y)
    emb = make_embedder(embedder)
    result = {"kind": kind, "train": len(train_rows), "holdout": len(test_rows)}
    if test_rows:
        result.update(evaluate_scorer(scorer, test_rows, embedder))
    checkpoint.save(out, scorer, emb.name, emb.dim,
                    {"labels": str(labels), "holdout_fraction": holdout, **result,
                     "calibration": f"out-of-fold scores of the {len(y)} training prompts"},
                    calibration=calibration)
    return result


def evaluate_scorer(scorer, rows: list[dict], embedder: str) -> dict:
    X = embed_rows(rows, embedder)
    weak = np.array([r["weak_score"] for r in rows], float)
    strong = np.array([r["strong_score"] for r in rows], float)
    p = np.asarray(scorer.score(X))
    return {**summary(p, weak, strong), "random_apgr": curves(p, weak, strong)["random_apgr"]}


def _labels_path(name: str) -> Path:
    """A label file named in a checkpoint: as given, else relative to the package root."""
    path = Path(name)
    return path if path.exists() or path.is_absolute() else PACKAGE_ROOT / path


def evaluate(ckpt: str | None, labels: str | None) -> tuple[dict, dict]:
    """(figures, curves) on ``labels``; without labels, on the held-out split of the file
    the checkpoint was trained on. Without ``ckpt``, the shipped default checkpoint."""
    ckpt_path = Path(ckpt) if ckpt else DEFAULT_CHECKPOINT
    _, meta = checkpoint.load(ckpt_path)
    scorer, _ = checkpoint.load(ckpt_path, meta["embedder"], meta["dim"])
    if labels:
        rows, on = read_jsonl(labels), str(labels)
    else:
        if "labels" not in meta:
            raise ValueError(f"{ckpt_path}: names no label file; pass --labels")
        rows = split(read_jsonl(_labels_path(meta["labels"])),
                     meta.get("holdout_fraction", 0.0))[1]
        on = f"held-out split of {meta['labels']}"
        if not rows:
            raise ValueError(f"{ckpt_path}: its label file has no held-out rows; pass --labels")
    X = embed_rows(rows, meta["embedder"])
    weak = np.array([r["weak_score"] for r in rows], float)
    strong = np.array([r["strong_score"] for r in rows], float)
    c = curves(np.asarray(scorer.score(X)), weak, strong)
    figures = {"kind": meta["kind"], "checkpoint": str(ckpt_path), "labels": on,
               "n": len(rows), **summary(np.asarray(scorer.score(X)), weak, strong),
               "random_apgr": c["random_apgr"], "oracle_apgr": c["oracle_apgr"]}
    return figures, c


def calibrate(ckpt: str, prompts: str, cloud_fraction: float, save: bool = False) -> float:
    """The threshold sending ``cloud_fraction`` of ``prompts`` to the strong model; with
    ``save``, their scores replace the checkpoint's calibration scores, so a configured
    ``routing.router.cloud_fraction`` follows your own traffic."""
    scorer, meta = checkpoint.load(ckpt)
    X = embed_rows(read_jsonl(prompts), meta["embedder"])
    scores = np.asarray(scorer.score(X), dtype=np.float64)
    if save:
        extra = {k: v for k, v in meta.items()
                 if k not in ("format", "kind", "embedder", "dim", "calibration_scores")}
        extra["calibration"] = f"scores of the {len(scores)} prompts in {prompts}"
        checkpoint.save(ckpt, scorer, meta["embedder"], meta["dim"], extra, scores)
    return threshold_for_fraction(scores, cloud_fraction)
