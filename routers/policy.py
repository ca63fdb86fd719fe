"""Policy: which configured model answers a request, and which take over if it fails.

Rules at this stage: an explicit model name, the configured aliases, ``tandem`` →
the default. Kept apart from *how* a model answers (clients/) and *where, with
fallback* (the chain returned here and walked by the server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clients.errors import ModelNotFound

POLICY_NAME = "tandem"


@dataclass(frozen=True)
class Decision:
    """The model to try first, the whole ordered chain, and why."""

    chain: tuple[str, ...]
    reason: str
    rule: str = "explicit"  # which rule decided: explicit, alias, default (metrics label)

    @property
    def model(self) -> str:
        return self.chain[0]


class Policy:
    def __init__(self, models: list[str], default: str, fallback: list[str],
                 aliases: dict[str, str] | None = None) -> None:
        self.models = list(models)
        self.default = default
        self.fallback = list(fallback)
        self.aliases = dict(aliases or {})

    @classmethod
    def from_config(cls, config) -> "Policy":
        return cls(list(config.models), config.routing.default, config.routing.fallback,
                   config.routing.aliases)

    def names(self) -> list[str]:
        """Every name a caller may ask for, in the order /v1/models lists them."""
        extra = [a for a in self.aliases if a not in self.models]
        return [POLICY_NAME, *self.models, *extra]

    def chain_from(self, model: str) -> tuple[str, ...]:
        """``model`` followed by the fallback models after it in the configured chain."""
        if model in self.fallback:
            rest = self.fallback[self.fallback.index(model) + 1 :]
        else:
            rest = []
        return (model, *[m for m in rest if m != model])

    def decide(self, requested: str, body: dict[str, Any] | None = None) -> Decision:
        if requested in self.models:
            return Decision(self.chain_from(requested), f"explicit model '{requested}'")
        if requested in self.aliases:
            target = self.aliases[requested]
            return Decision(self.chain_from(target), f"alias '{requested}' -> '{target}'",
                            "alias")
        if requested == POLICY_NAME:
            return Decision(self.chain_from(self.default), f"default '{self.default}'",
                            "default")
        raise ModelNotFound(requested, self.names())
