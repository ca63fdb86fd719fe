"""Policy: which configured model answers a request, and which take over if it fails.

Names: an explicit model, an alias, ``router-<kind>-<threshold>`` (RouteLLM's naming:
the router's p_strong against the threshold picks ``strong`` or ``weak``), and
``tandem`` (the configured router and threshold, or the default model). Rules before
the score: a conversation longer than the weak model's context goes to the strong one.
Kept apart from *how* a model answers (clients/) and *where, with fallback* (the chain
returned here and walked by the server).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from clients.errors import ModelNotFound
from routers.base import Router, load_router, make_embedder
from routers.embed import conversation_text

POLICY_NAME = "tandem"
ROUTER_NAME = re.compile(r"^router-([a-z_]+)-([01](?:\.\d+)?)$")
CHARS_PER_TOKEN = 3.0  # conservative estimate for the context rule (no tokenizer needed)


@dataclass(frozen=True)
class Decision:
    """The model to try first, the whole ordered chain, and why."""

    chain: tuple[str, ...]
    reason: str
    rule: str = "explicit"  # which rule decided: explicit, alias, default, router-<kind>, ...
    score: float | None = None  # the router's p_strong, when a router decided

    @property
    def model(self) -> str:
        return self.chain[0]


class Policy:
    def __init__(self, models: list[str], default: str, fallback: list[str],
                 aliases: dict[str, str] | None = None, routers: dict[str, Router] | None = None,
                 strong: str | None = None, weak: str | None = None,
                 policy_router: tuple[str, float, str] | None = None,
                 weak_context: int | None = None) -> None:
        self.models = list(models)
        self.default = default
        self.fallback = list(fallback)
        self.aliases = dict(aliases or {})
        self.routers = dict(routers or {})
        self.strong, self.weak = strong, weak
        self.policy_router = policy_router  # (kind, threshold, where from) for `tandem`
        self.weak_context = weak_context

    @classmethod
    def from_config(cls, config) -> "Policy":
        r = config.routing
        routers: dict[str, Router] = {}
        if r.strong and r.weak:
            embedder = make_embedder(r.embedder)
            kinds = set(r.routers) | {"random"} | ({r.router.kind} if r.router else set())
            routers = {k: load_router(k, r.routers.get(k), embedder) for k in kinds}
        weak_ctx = None
        if r.weak and getattr(config.models[r.weak], "n_ctx", None):
            weak_ctx = config.models[r.weak].n_ctx
        return cls(list(config.models), r.default, r.fallback, r.aliases, routers, r.strong,
                   r.weak, _policy_plan(r.router, routers), weak_ctx)

    def names(self) -> list[str]:
        """Every name a caller may ask for, in the order /v1/models lists them."""
        extra = [a for a in self.aliases if a not in self.models]
        routed = [f"router-{k}-0.5" for k in sorted(self.routers)]
        return [POLICY_NAME, *self.models, *extra, *routed]

    def _router_for(self, requested: str) -> tuple[str, float, str] | None:
        """(kind, threshold, where the threshold came from) when ``requested`` is decided
        by a router, else None."""
        if requested == POLICY_NAME:
            return self.policy_router
        m = ROUTER_NAME.match(requested)
        if m is None or not self.routers:
            return None
        kind, threshold = m.group(1), float(m.group(2))
        if kind not in self.routers or not 0.0 <= threshold <= 1.0:
            raise ModelNotFound(requested, self.names())
        return kind, threshold, "model name"

    async def route(self, requested: str, body: dict[str, Any]) -> Decision:
        """``decide``, plus the routers: scoring runs in a worker thread (it embeds)."""
        plan = self._router_for(requested)
        if plan is None:
            return self.decide(requested, body)
        kind, threshold, source = plan
        messages = body.get("messages") or []
        if self.weak_context and self.strong:
            chars = len(conversation_text(messages, budget_chars=10**9))
            if chars / CHARS_PER_TOKEN > self.weak_context:
                return Decision(self.chain_from(self.strong),
                                f"prompt ~{int(chars / CHARS_PER_TOKEN)} tokens exceeds "
                                f"'{self.weak}' context {self.weak_context}",
                                "context_length")
        p = await asyncio.to_thread(self.routers[kind].p_strong, messages)
        target = self.strong if p >= threshold else self.weak
        op = ">=" if p >= threshold else "<"
        return Decision(self.chain_from(target),
                        f"router {kind} p_strong={p:.3f} {op} {threshold:.4g} ({source}) "
                        f"-> '{target}'",
                        f"router-{kind}", score=p)

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
        if self._router_for(requested) is not None:  # valid router name; scored in route()
            return Decision(self.chain_from(self.weak or self.default),
                            f"router name '{requested}'", "router")
        raise ModelNotFound(requested, self.names())


def _policy_plan(cfg, routers: dict[str, Router]) -> tuple[str, float, str] | None:
    """`tandem`'s (kind, threshold, where from): the configured threshold, or the one that
    sends ``cloud_fraction`` of the router's calibration prompts to the strong model."""
    if cfg is None:
        return None
    if cfg.threshold is not None:
        return cfg.kind, cfg.threshold, "configured threshold"
    threshold = routers[cfg.kind].threshold_for(cfg.cloud_fraction)
    return cfg.kind, threshold, f"threshold for cloud_fraction {cfg.cloud_fraction:g}"
