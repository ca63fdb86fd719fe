"""Learned routers on a prompt embedding: matrix factorisation (RouteLLM), kNN, logistic.

Each maps an embedding e (unit norm) to p_strong, the probability that the strong
model's answer is needed, and trains with numpy from labelled embeddings:
``y = 1`` where only the strong model was good enough. State is plain arrays, saved by
routers/checkpoint.py (no pickle).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


class EmbeddingScorer(abc.ABC):
    """p_strong from an embedding; ``arrays()``/``from_arrays`` round-trip its state."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def score(self, e: np.ndarray) -> np.ndarray:
        """p_strong for one embedding (d,) or a batch (n, d)."""

    @abc.abstractmethod
    def arrays(self) -> dict[str, np.ndarray]: ...

    @classmethod
    @abc.abstractmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "EmbeddingScorer": ...


def _row_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """Per-row loss weights summing to 1 (uniform without ``weights``)."""
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    return w / max(w.sum(), 1e-12)


class _Adam:
    def __init__(self, params: dict[str, np.ndarray], lr: float) -> None:
        self.lr, self.t = lr, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for k, g in grads.items():
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            m_hat = self.m[k] / (1 - 0.9**self.t)
            v_hat = self.v[k] / (1 - 0.999**self.t)
            params[k] -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


class MFScorer(EmbeddingScorer):
    """RouteLLM's matrix factorisation: P(strong wins) = sigmoid(w·((v_s − v_w) ⊙ W e)).

    ``W`` projects the prompt embedding into the model-embedding space (k), ``v_s`` and
    ``v_w`` embed the strong and weak model, ``w`` (with bias ``b``) reads the result.
    """

    kind = "mf"

    def __init__(self, W: np.ndarray, v_s: np.ndarray, v_w: np.ndarray, w: np.ndarray,
                 b: float = 0.0) -> None:
        self.W, self.v_s, self.v_w, self.w, self.b = W, v_s, v_w, w, float(b)

    def logit(self, e: np.ndarray) -> np.ndarray:
        return ((e @ self.W.T) * (self.v_s - self.v_w)) @ self.w + self.b

    def score(self, e: np.ndarray) -> np.ndarray:
        return sigmoid(self.logit(e))

    @classmethod
    def train(cls, X: np.ndarray, y: np.ndarray, k: int = 64, epochs: int = 200,
              lr: float = 3e-3, noise: float = 0.01, l2: float = 1e-4,
              seed: int = 0, weights: np.ndarray | None = None) -> "MFScorer":
        """Binary cross-entropy on (embedding, strong-needed) pairs, Gaussian noise on e;
        ``weights`` scale each row's loss (traffic labels against shipped ones)."""
        rng = np.random.default_rng(seed)
        d = X.shape[1]
        p = {"W": rng.normal(0, 1 / np.sqrt(d), (k, d)), "v_s": rng.normal(0, 1, k),
             "v_w": rng.normal(0, 1, k), "w": rng.normal(0, 1 / np.sqrt(k), k),
             "b": np.zeros(1)}
        opt = _Adam(p, lr)
        y = y.astype(np.float64)
        w = _row_weights(weights, len(y))
        for _ in range(epochs):
            e = X + rng.normal(0, noise, X.shape)
            h = e @ p["W"].T  # (n, k)
            dv = p["v_s"] - p["v_w"]
            z = (h * dv) @ p["w"] + p["b"][0]
            g = (sigmoid(z) - y) * w  # dBCE/dz, weighted mean
            gw = (h * dv).T @ g
            gh = np.outer(g, p["w"] * dv)  # (n, k)
            gdv = (h * np.outer(g, p["w"])).sum(0)
            grads = {"W": gh.T @ e + l2 * p["W"], "w": gw + l2 * p["w"], "v_s": gdv,
                     "v_w": -gdv, "b": np.array([g.sum()])}
            opt.step(p, grads)
        return cls(p["W"], p["v_s"], p["v_w"], p["w"], float(p["b"][0]))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"W": self.W, "v_s": self.v_s, "v_w": self.v_w, "w": self.w,
                "b": np.array([self.b])}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "MFScorer":
        return cls(a["W"], a["v_s"], a["v_w"], a["w"], float(a["b"][0]))


class KNNScorer(EmbeddingScorer):
    """Similarity-weighted vote of the k nearest labelled prompts (cosine, unit vectors)."""

    kind = "knn"

    def __init__(self, X: np.ndarray, y: np.ndarray, k: int = 10, temperature: float = 0.05,
                 w: np.ndarray | None = None):
        self.X, self.y = X.astype(np.float32), y.astype(np.float32)
        self.XT = np.ascontiguousarray(self.X.T)  # (d, m): a sparse query reads few rows
        self.k, self.temperature = int(k), float(temperature)
        self.w = (np.ones(len(self.y), np.float32) if w is None
                  else np.asarray(w, np.float32))

    def score(self, e: np.ndarray) -> np.ndarray:
        single = e.ndim == 1
        if single and np.count_nonzero(e) * 8 < e.shape[0]:
            nz = np.flatnonzero(e)  # hashing features: ~100 of 4096 set, 40x less work
            sims = (e[nz].astype(np.float32) @ self.XT[nz])[None, :]
        else:
            sims = np.atleast_2d(e).astype(np.float32) @ self.XT  # (n, m)
        k = min(self.k, self.X.shape[0])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, idx, axis=1)
        weights = np.exp((top - top.max(axis=1, keepdims=True)) / self.temperature)
        weights = weights * self.w[idx]
        p = (weights * self.y[idx]).sum(1) / weights.sum(1)
        return p[0] if single else p

    @classmethod
    def train(cls, X: np.ndarray, y: np.ndarray, k: int = 10,
              weights: np.ndarray | None = None) -> "KNNScorer":
        return cls(X, y, k, w=weights)

    def arrays(self) -> dict[str, np.ndarray]:
        """The prompt embeddings as CSR (hashing features are sparse: ~50× smaller)."""
        rows, cols = np.nonzero(self.X)
        ptr = np.searchsorted(rows, np.arange(self.X.shape[0] + 1)).astype(np.int64)
        return {"X_shape": np.array(self.X.shape, np.int64), "X_ptr": ptr,
                "X_col": cols.astype(np.int32), "X_val": self.X[rows, cols].astype(np.float32),
                "y": self.y, "k": np.array([self.k]),
                "temperature": np.array([self.temperature]), "w": self.w}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "KNNScorer":
        if "X" in a:  # checkpoints written before CSR storage
            X = a["X"]
        else:
            n, d = (int(v) for v in a["X_shape"])
            X = np.zeros((n, d), np.float32)
            rows = np.repeat(np.arange(n), np.diff(a["X_ptr"]))
            X[rows, a["X_col"]] = a["X_val"]
        return cls(X, a["y"], int(a["k"][0]), float(a["temperature"][0]), a.get("w"))


def _products(X: np.ndarray):
    """(X @ w, X.T @ g) for a fixed training matrix. Hashing features are ~3% non-zero:
    then both run over the non-zeros only (a retrain's fit falls from seconds to a
    fraction of one, which is CPU a 2-core gateway keeps for serving); dense embeddings
    go through BLAS, cast to float64 once rather than at every product."""
    n, d = X.shape
    rows, cols = np.nonzero(X)
    if len(rows) > 0.1 * n * d:
        Xd = np.asarray(X, np.float64)
        return (lambda w: Xd @ w), (lambda g: Xd.T @ g)
    vals = X[rows, cols].astype(np.float64)
    return (lambda w: np.bincount(rows, weights=vals * w[cols], minlength=n),
            lambda g: np.bincount(cols, weights=vals * g[rows], minlength=d))


class LogisticScorer(EmbeddingScorer):
    """Logistic regression on the embedding (L2-regularised, full-batch Adam)."""

    kind = "classifier"

    def __init__(self, w: np.ndarray, b: float) -> None:
        self.w, self.b = w, float(b)

    def score(self, e: np.ndarray) -> np.ndarray:
        return sigmoid(e @ self.w + self.b)

    @classmethod
    def train(cls, X: np.ndarray, y: np.ndarray, epochs: int = 300, lr: float = 1e-2,
              l2: float = 1e-3, weights: np.ndarray | None = None) -> "LogisticScorer":
        p = {"w": np.zeros(X.shape[1]), "b": np.zeros(1)}
        opt = _Adam(p, lr)
        rw = _row_weights(weights, len(y))
        matvec, rmatvec = _products(X)
        for _ in range(epochs):
            g = (sigmoid(matvec(p["w"]) + p["b"][0]) - y) * rw
            opt.step(p, {"w": rmatvec(g) + l2 * p["w"], "b": np.array([g.sum()])})
        return cls(p["w"], float(p["b"][0]))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"w": self.w, "b": np.array([self.b])}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "LogisticScorer":
        return cls(a["w"], float(a["b"][0]))


SCORERS: dict[str, type[EmbeddingScorer]] = {
    s.kind: s for s in (MFScorer, KNNScorer, LogisticScorer)
}
