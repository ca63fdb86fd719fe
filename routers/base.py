"""The router interface: a conversation in, the probability that the strong model is needed out.

A threshold turns the score into a decision. Learned routers (matrix factorisation,
kNN, classifiers) register here; the policy (routers/policy.py) consults one after its
rules.
"""

from __future__ import annotations

import abc
import random
from typing import Any, Callable

Conversation = list[dict[str, Any]]


class Router(abc.ABC):
    """Scores a conversation; 1.0 means "only the strong model will do"."""

    @abc.abstractmethod
    def p_strong(self, messages: Conversation) -> float:
        """Probability in [0, 1] that the strong (cloud) model's answer is needed."""

    def threshold_for(self, cloud_fraction: float) -> float:
        """The threshold that sends ``cloud_fraction`` of typical traffic to the strong
        model; raises ValueError when this router has nothing to calibrate on."""
        raise ValueError(f"{type(self).__name__} cannot turn a cloud_fraction into a "
                         "threshold; configure routing.router.threshold")


RouterFactory = Callable[..., Router]
ROUTERS: dict[str, RouterFactory] = {}


def register_router(kind: str) -> Callable[[RouterFactory], RouterFactory]:
    def deco(factory: RouterFactory) -> RouterFactory:
        ROUTERS[kind] = factory
        return factory

    return deco


@register_router("random")
class RandomRouter(Router):
    """Baseline: a uniform score, so a threshold t sends a fraction 1 - t to the cloud."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def p_strong(self, messages: Conversation) -> float:
        return self._rng.random()

    def threshold_for(self, cloud_fraction: float) -> float:
        return 1.0 - cloud_fraction  # uniform scores: exact, no calibration needed


class LearnedRouter(Router):
    """An embedder and a trained scorer over the conversation text; ``calibration`` holds
    scores of prompts the scorer was not fitted on (from its checkpoint)."""

    def __init__(self, embedder, scorer, calibration=None, source: str = "") -> None:
        self.embedder = embedder
        self.scorer = scorer
        self.calibration = calibration
        self.source = source

    def threshold_for(self, cloud_fraction: float) -> float:
        from routers.evaluate import threshold_for_fraction

        if self.calibration is None:
            raise ValueError(f"{self.source or 'this router'}: no calibration scores stored; "
                             "run `tandem router calibrate --ckpt CKPT --prompts FILE --save` "
                             "or configure routing.router.threshold")
        return threshold_for_fraction(self.calibration, cloud_fraction)

    def embed(self, messages: Conversation):
        """The conversation's prompt embedding (latest user turn first, capped)."""
        from routers.embed import conversation_text

        return self.embedder.embed([conversation_text(messages)])[0]

    def p_strong(self, messages: Conversation) -> float:
        return float(self.scorer.score(self.embed(messages)))


def make_embedder(name: str):
    """``hashing-4096`` → HashingEmbedder(4096). The registry of embedders by prefix."""
    from routers.embed import HashingEmbedder

    kind, _, size = name.partition("-")
    factories = {"hashing": lambda: HashingEmbedder(int(size or 4096))}
    if kind not in factories:
        raise ValueError(f"unknown embedder '{name}' (known: hashing-<dim>)")
    return factories[kind]()


def shipped_checkpoint(name: str):
    """A checkpoint path as given, or the shipped checkpoint of that name (``broad-classifier``
    -> routers/checkpoints/broad-classifier.npz)."""
    from pathlib import Path

    path = Path(name).expanduser()
    shipped = Path(__file__).resolve().parent / "checkpoints" / f"{name}.npz"
    if not path.exists() and "/" not in name and not name.endswith(".npz") and shipped.exists():
        return shipped
    return path


def load_router(kind: str, checkpoint_path: str | None, embedder) -> Router:
    """A router of ``kind``: random needs nothing, learned kinds their checkpoint."""
    if kind == "random":
        return RandomRouter()
    from routers import checkpoint

    if checkpoint_path is None:
        raise ValueError(f"router '{kind}' needs a checkpoint (routing.routers.{kind})")
    checkpoint_path = str(shipped_checkpoint(checkpoint_path))
    scorer, meta = checkpoint.load(checkpoint_path, embedder.name, embedder.dim)
    if meta["kind"] != kind:
        raise checkpoint.CheckpointError(
            f"{checkpoint_path}: holds a '{meta['kind']}' router, configured as '{kind}'")
    return LearnedRouter(embedder, scorer, meta["calibration_scores"], str(checkpoint_path))
