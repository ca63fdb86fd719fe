"""Policy: which configured model answers a request, and which take over if it fails.

Names: an explicit model, an alias, ``router-<kind>-<threshold>`` (RouteLLM's naming:
the router's p_strong against the threshold picks ``strong`` or ``weak``), and
``tandem``. For ``tandem``, in order: a key past its budget share gets the weak model;
the operator's ``routing.rules`` (first match); a conversation longer than the weak
model's context goes to the strong one; then the live router (routers/online.py) at the
key's or the configured cloud fraction; the default model when no router is set.
Kept apart from *how* a model answers (clients/) and *where, with fallback* (the chain
returned here and walked by the server).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from clients.errors import ModelNotFound
from routers.base import LearnedRouter, Router, load_router, make_embedder
from routers.online import LiveRouter
from routers.rules import RouteContext, Rule, first_match, rules_from_config

POLICY_NAME = "tandem"
ROUTER_NAME = re.compile(r"^router-([a-z_]+)-([01](?:\.\d+)?)$")


@dataclass(frozen=True)
class Decision:
    """The model to try first, the whole ordered chain, and why."""

    chain: tuple[str, ...]
    reason: str
    rule: str = "explicit"  # which rule decided: explicit, alias, default, router-<kind>, ...
    score: float | None = None  # the router's p_strong, when a router decided
    threshold: float | None = None
    routed: bool = False  # `tandem` (or a router name) decided it: feedback can teach
    explored: bool = False  # sent to the model the router did not pick
    features: object = None  # the prompt embedding, when one was computed

    @property
    def model(self) -> str:
        return self.chain[0]


class Policy:
    def __init__(self, models: list[str], default: str, fallback: list[str],
                 aliases: dict[str, str] | None = None, routers: dict[str, Router] | None = None,
                 strong: str | None = None, weak: str | None = None,
                 policy_router: tuple[str, float, str] | None = None,
                 weak_context: int | None = None, rules: list[Rule] | None = None,
                 live: LiveRouter | None = None, downgrade_at: float | None = None) -> None:
        self.models = list(models)
        self.default = default
        self.fallback = list(fallback)
        self.aliases = dict(aliases or {})
        self.routers = dict(routers or {})
        self.strong, self.weak = strong, weak
        self.policy_router = policy_router  # (kind, threshold, where from) for `tandem`
        self.weak_context = weak_context
        self.rules = list(rules or [])
        self.live = live  # the learned router behind `tandem`, when there is one
        self.downgrade_at = downgrade_at

    @classmethod
    def from_config(cls, config, store=None, metrics=None) -> "Policy":
        r = config.routing
        routers: dict[str, Router] = {}
        live = None
        if r.strong and r.weak:
            embedder = make_embedder(r.embedder)
            kinds = set(r.routers) | {"random"} | ({r.router.kind} if r.router else set())
            routers = {k: load_router(k, r.routers.get(k), embedder) for k in kinds}
            if r.router and isinstance(routers[r.router.kind], LearnedRouter):
                live = LiveRouter(routers[r.router.kind], r.router.kind, r, store, metrics)
                routers[r.router.kind] = live
        weak_ctx = None
        if r.weak and getattr(config.models[r.weak], "n_ctx", None):
            weak_ctx = config.models[r.weak].n_ctx
        return cls(list(config.models), r.default, r.fallback, r.aliases, routers, r.strong,
                   r.weak, _policy_plan(r.router, routers), weak_ctx,
                   rules_from_config(r.rules), live, r.budget_downgrade_at)

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

    async def route(self, requested: str, body: dict[str, Any],
                    ctx: RouteContext | None = None, dry_run: bool = False) -> Decision:
        """``decide``, plus rules and routers. The live router scores inline; other
        routers in a worker thread. A dry run decides without counting towards the
        traffic the router tracks."""
        ctx = ctx or RouteContext(body)
        policy = requested == POLICY_NAME
        if policy:
            pre = self._before_router(ctx)
            if pre is not None:
                return pre
        plan = self._router_for(requested)
        if plan is None:
            return self.decide(requested, body)
        kind, threshold, source = plan
        router = self.routers[kind]
        too_long = None if policy else self._context_rule(ctx)  # `tandem` checked it above
        if too_long is not None:
            return too_long
        if policy and isinstance(router, LiveRouter):
            threshold, source = router.threshold(ctx.key_cloud_fraction)
            if ctx.key_cloud_fraction is not None:
                source = f"key '{ctx.key_name}' {source}"
        features = None
        if isinstance(router, LiveRouter):
            # inline: the text is capped at 4,000 characters and the score reads only the
            # prompt's non-zero features, ~0.3 ms; a thread hop costs more than that on
            # cores busy decoding (see docs/DECISIONS.md)
            features, p = router.embed_and_score(ctx.messages)
            strong = (router.decide(p, threshold, ctx.key_cloud_fraction) if policy
                      else p >= threshold)
        else:
            p = await asyncio.to_thread(router.p_strong, ctx.messages)
            strong = p >= threshold
        op = ">=" if strong else "<"
        explored = False
        if policy and isinstance(router, LiveRouter) and not dry_run:
            router.observe(p, features)
            explored = router.explore(strong, ctx.key_cloud_fraction)
            router.went(strong != explored)
        target = self.strong if strong != explored else self.weak
        reason = (f"router {kind} p_strong={p:.3f} {op} {threshold:.4g} ({source}) "
                  f"-> '{target}'" + (" (exploring)" if explored else ""))
        return Decision(self.chain_from(target), reason, f"router-{kind}", score=p,
                        threshold=threshold, routed=True, explored=explored,
                        features=features)

    def _context_rule(self, ctx: RouteContext) -> Decision | None:
        """A conversation longer than the weak model's context goes to the strong one."""
        if not (self.weak_context and self.strong):
            return None
        tokens = ctx.prompt_tokens()
        if tokens > self.weak_context:
            return Decision(self.chain_from(self.strong),
                            f"prompt ~{tokens} tokens exceeds '{self.weak}' context "
                            f"{self.weak_context}", "context_length", routed=True)
        return None

    def _before_router(self, ctx: RouteContext) -> Decision | None:
        """`tandem`'s decisions that need no score: budget, operator rules, context."""
        share = ctx.downgrade_at if ctx.downgrade_at is not None else self.downgrade_at
        if share is not None and ctx.budget_share is not None and ctx.budget_share >= share:
            return Decision(self.chain_from(self.weak),
                            f"key '{ctx.key_name}' has spent {ctx.budget_share:.0%} of its "
                            f"budget (downgrade at {share:.0%}) -> '{self.weak}'", "budget",
                            routed=True)
        rule = first_match(self.rules, ctx)
        if rule is not None:
            return Decision(self.chain_from(rule.use), f"rule '{rule.name}' -> '{rule.use}'",
                            f"rule:{rule.name}", routed=True)
        return self._context_rule(ctx)

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


def describe(decision: Decision) -> dict[str, Any]:
    """The dry-run view of a decision (POST /v1/tandem/route)."""
    return {"model": decision.model, "chain": list(decision.chain), "rule": decision.rule,
            "p_strong": decision.score, "threshold": decision.threshold,
            "explored": decision.explored, "reason": decision.reason}
