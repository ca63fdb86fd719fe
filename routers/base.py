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
