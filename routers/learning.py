"""Learning from served traffic: labels from feedback, retraining, and the gate.

Feedback scores one answer, of the model that gave it, so a traffic label is partial.
The other model's score is imputed by a kNN vote of that model's known scores nearby
(the shipped rows, where both are known, and the traffic labels of that model); the
training target is the strong model's expected gain, clip(strong − weak, 0, 1).
Exploration makes sure both models have traffic labels near each kind of prompt.

A new scorer is trained on the shipped label set plus the traffic labels (weighted
``traffic_weight``), never on held-out labels (a hash of the request id). It replaces
the serving one only if its APGR on held-out traffic labels (the missing model's score
imputed as above) is no worse; with fewer than ``min_heldout`` of them nothing is
judged and nothing changes (the shipped set's own held-out split says nothing about
the traffic, so it is not used).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import orjson

from routers import checkpoint
from routers.evaluate import summary
from routers.learned import SCORERS, KNNScorer


def sparse(e: np.ndarray) -> dict:
    """A unit-norm embedding as its non-zero entries (hashing features are sparse)."""
    idx = np.flatnonzero(e)
    return {"d": int(e.shape[0]), "i": idx.tolist(), "v": np.round(e[idx], 5).tolist()}


def dense(s: dict, dim: int) -> np.ndarray:
    out = np.zeros(dim, np.float32)
    if s.get("d") == dim and s["i"]:
        out[np.asarray(s["i"], int)] = np.asarray(s["v"], np.float32)
    return out


def dedupe(labels: list[dict]) -> list[dict]:
    """One label per request id: the latest caller feedback, else the latest judge's."""
    ordered = sorted(labels, key=lambda lab: lab.get("source") != "judge")  # stable
    return list({lab["id"]: lab for lab in ordered}.values())


def held_out(request_id: str, share: float) -> bool:
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < share


def labels_of(checkpoint_path: str) -> str | None:
    """The label file a checkpoint was trained on (from its metadata)."""
    from routers.tools import _labels_path

    meta = checkpoint.load(checkpoint_path)[1]
    return str(_labels_path(meta["labels"])) if meta.get("labels") else None


def base_rows(path: str | None, embedder) -> dict:
    """The shipped label set's training rows (embedded, targets, both scores) and the
    embeddings of its held-out rows (20%, as `tandem router train` splits it), which
    calibrate a new checkpoint until recent traffic can."""
    from routers.tools import _messages, read_jsonl, split, targets
    from routers.embed import conversation_text

    if not path or not Path(path).exists():
        return {"X": np.zeros((0, embedder.dim), np.float32), "y": np.zeros(0),
                "X_held": np.zeros((0, embedder.dim), np.float32),
                "weak": np.zeros(0), "strong": np.zeros(0)}
    train_rows, held = split(read_jsonl(path), 0.2)
    X = embedder.embed([conversation_text(_messages(r)) for r in train_rows])
    X_held = embedder.embed([conversation_text(_messages(r)) for r in held])
    return {"X": X, "y": targets(train_rows), "X_held": X_held,
            "weak": np.array([r["weak_score"] for r in train_rows], float),
            "strong": np.array([r["strong_score"] for r in train_rows], float)}


class Imputer:
    """Each model's expected score near a prompt: a kNN vote over the shipped rows (both
    scores known) and the traffic labels of that model. It fills in the score of the
    model that did not answer, so a partial label becomes a full one."""

    def __init__(self, base: dict, labels: list[dict], dim: int) -> None:
        self.heads = {}
        for role in ("weak", "strong"):
            own = [lab for lab in labels if lab["role"] == role]
            X = np.concatenate([base["X"], np.array([dense(lab["x"], dim) for lab in own],
                                                    np.float32).reshape(-1, dim)])
            y = np.concatenate([base[role], [lab["score"] for lab in own]])
            self.heads[role] = KNNScorer.train(X, y) if len(y) else None

    def full(self, labels: list[dict], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, weak scores, strong scores): observed where given, imputed elsewhere."""
        X = np.array([dense(lab["x"], dim) for lab in labels], np.float32).reshape(-1, dim)
        observed = np.array([lab["score"] for lab in labels], float)
        roles = np.array([lab["role"] for lab in labels])
        scores = {}
        for role, fallback in (("weak", 0.0), ("strong", 1.0)):
            head = self.heads[role]
            guess = (np.asarray(head.score(X), float) if head is not None and len(X)
                     else np.full(len(X), fallback))
            scores[role] = np.where(roles == role, observed, guess)
        return X, scores["weak"], scores["strong"]


def traffic_training(labels: list[dict], imputer: Imputer,
                     dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of the traffic labels, y = the strong model's expected gain, clipped to
    [0, 1] (with both scores 0/1, exactly RouteLLM's "strong needed")."""
    X, weak, strong = imputer.full(labels, dim)
    return X, np.clip(strong - weak, 0.0, 1.0)


def partial_apgr(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> float | None:
    if strong.mean() - weak.mean() <= 1e-9:
        return None
    return summary(scores, weak, strong)["apgr"]


def gate_scores(scorers: list, gate: list[dict], dim: int, imputer: Imputer,
                min_heldout: int) -> tuple[tuple | None, str]:
    """((each scorer's scores, weak, strong) on the held-out traffic labels, imputed
    once for all of them; None with fewer than ``min_heldout``), and what was judged."""
    if len(gate) < max(1, min_heldout):
        return None, f"{len(gate)} held-out traffic labels (fewer than {min_heldout})"
    X, weak, strong = imputer.full(gate, dim)
    return ([np.asarray(s.score(X), float) for s in scorers], weak, strong), \
        f"{len(gate)} held-out traffic labels"


def no_worse_confidence(p_new: np.ndarray, p_old: np.ndarray, weak: np.ndarray,
                        strong: np.ndarray, draws: int = 200) -> float:
    """Share of paired bootstrap resamples of the held-out labels on which the new
    scores' APGR is at least the old ones'. A point estimate on a few dozen labels is
    mostly noise (bench/router_online.py saw a retrain pass on 31 of them and serve a
    router that full labels put at 0.54 against the old one's 0.60): a narrow win there
    is not backed by the resamples, and keeping the old router is the safe default."""
    rng = np.random.default_rng(0)  # deterministic: replicas on the same labels agree
    wins = judged = 0
    for _ in range(draws):
        i = rng.integers(0, len(weak), len(weak))
        a = partial_apgr(p_new[i], weak[i], strong[i])
        b = partial_apgr(p_old[i], weak[i], strong[i])
        if a is None or b is None:  # the strong model no better on this draw
            continue
        judged += 1
        wins += a >= b - 1e-9
    return wins / judged if judged else 0.0


_WORKER: dict = {}  # per worker process: embedded shipped labels, loaded checkpoints


def idle_priority() -> None:
    """Every thread of this process (numpy's BLAS pool is already running) under Linux's
    SCHED_IDLE, and on one core, the last this process may use. SCHED_IDLE: it runs
    only when nothing else wants the core, and a serving thread that wakes takes it at
    once (a nice value alone still leaves it a share, and waits out the scheduler's
    wake-up granularity). One core: an idle-priority job free to move still cost a
    saturated 2-core gateway ~20% of its throughput and ~30% on p50 (wrk, c=4, against
    none when pinned: docs/PERFORMANCE.md); pinned, the other cores' caches stay the
    server's. Elsewhere the nice value is all there is."""
    import os

    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        return
    cpus = sorted(os.sched_getaffinity(0))
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(tid), policy, os.sched_param(0))
            if len(cpus) > 1:
                os.sched_setaffinity(int(tid), {cpus[-1]})
        except OSError:  # a thread that just ended, or a kernel without it
            pass


def worker_init(niceness: int) -> None:
    """The retrain worker's start: lowest priority (serving keeps the cores first), and an
    exit when the gateway that started it is gone (a killed gateway cannot shut its pool
    down, and an orphan would hold memory and CPU for good)."""
    import os
    import threading
    import time

    os.nice(niceness)
    idle_priority()
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def retrain_job(kind: str, version: int, path: str, labels_from: int, labels: list[bytes],
                base_labels: str | None, cfg: dict, embedder_name: str,
                recent: list[bytes]) -> dict:
    """The retrain, run in a worker process (its GIL is not the server's). The worker
    keeps every label it was sent, decoded; the server sends only the store's labels
    from index ``labels_from`` on, so what it reads, pickles and sends per retrain is
    the new labels, not all of them. A worker that holds a different count (a new one,
    after a crash) answers ``resend`` and is sent everything from 0. Labels and recent
    embeddings arrive as the JSON bytes they are stored as; the shipped labels are
    embedded once per worker, the serving checkpoint loaded from its file."""
    from types import SimpleNamespace

    from routers.base import make_embedder

    seen: list[dict] = _WORKER.setdefault("labels", [])
    if labels_from != len(seen):
        if labels_from:
            return {"outcome": "resend", "labels_seen": len(seen)}
        seen.clear()
    seen.extend(orjson.loads(b) for b in labels)
    decoded = dedupe(seen)
    recent_rows = [orjson.loads(b) for b in recent]

    embedder = make_embedder(embedder_name)
    key = ("base", base_labels, embedder_name)
    if key not in _WORKER:
        _WORKER[key] = base_rows(base_labels, embedder)
    if ("ckpt", path) not in _WORKER:
        _WORKER[("ckpt", path)] = checkpoint.load(path, embedder.name, embedder.dim)[0]
    current = SimpleNamespace(version=version, path=path, scorer=_WORKER[("ckpt", path)])
    return {**retrain(kind, current, decoded, _WORKER[key], SimpleNamespace(**cfg), embedder,
                      recent_rows), "labels_seen": len(seen)}


def retrain(kind: str, current, labels: list[dict], base: dict, cfg, embedder,
            recent: list[dict]) -> dict:
    """Train, gate and (if accepted) save the next version. Returns the outcome and,
    when accepted, ``version``, ``path``, figures and ``recent_scores`` for tracking."""
    dim = embedder.dim
    usable = [lab for lab in labels if lab.get("x", {}).get("d") == dim]
    gate = [lab for lab in usable if held_out(lab["id"], cfg.holdout)]
    train_labels = [lab for lab in usable if not held_out(lab["id"], cfg.holdout)]
    imputer = Imputer(base, train_labels, dim)
    Xt, yt = traffic_training(train_labels, imputer, dim)
    if not len(yt):
        return {"outcome": "skipped", "reason": "no trainable traffic labels yet"}
    X = np.concatenate([base["X"], Xt])
    y = np.concatenate([base["y"], yt])
    w = np.concatenate([np.ones(len(base["y"])), np.full(len(yt), cfg.traffic_weight)])
    scorer = SCORERS[kind].train(X, y, weights=w)
    judged, on = gate_scores([scorer, current.scorer], gate, dim, imputer, cfg.min_heldout)
    new_value = old_value = None
    if judged is not None:
        (p_new, p_old), weak, strong = judged
        new_value, old_value = (partial_apgr(p, weak, strong) for p in (p_new, p_old))
    figures = {"new_apgr": new_value, "old_apgr": old_value, "gate": on,
               "traffic_labels": len(usable), "trained_rows": int(len(y))}
    if new_value is None:  # nothing to judge it on: wait for held-out labels
        return {"outcome": "skipped", "reason": "not enough held-out traffic labels to "
                f"judge a new checkpoint on yet ({on})", **figures}
    if old_value is not None:
        if new_value < old_value - 1e-9:
            return {"outcome": "rejected", **figures}
        figures["confidence"] = round(no_worse_confidence(p_new, p_old, weak, strong), 3)
        if figures["confidence"] < cfg.gate_confidence:
            return {"outcome": "rejected", "reason": "no worse on the held-out labels, but "
                    f"in only {figures['confidence']:.0%} of bootstrap resamples of them "
                    f"(needs {cfg.gate_confidence:.0%})", **figures}
    R = (np.stack([dense(s, dim) for s in recent]) if recent
         else np.zeros((0, dim), np.float32))
    recent_scores = np.asarray(scorer.score(R), float) if len(R) else np.zeros(0)
    calibration = (recent_scores if len(recent_scores) >= 100
                   else np.asarray(scorer.score(np.concatenate([base["X_held"], Xt])),
                                   float).reshape(-1))
    version = current.version + 1
    out = Path(cfg.checkpoint_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}-v{version}-{len(usable)}labels.npz"
    tmp = path.with_suffix(".tmp.npz")
    checkpoint.save(tmp, scorer, embedder.name, dim,
                    {"version": version, "parent": current.path, "apgr": new_value,
                     "gate": on, "traffic_labels": len(usable),
                     "calibration": "scores of recent traffic"}, calibration=calibration)
    checkpoint.load(tmp, embedder.name, dim)  # a corrupt file never serves
    tmp.replace(path)
    return {"outcome": "accepted", "version": version, "path": str(path), **figures,
            "recent_scores": recent_scores.tolist(), "trained_at": time.time()}
