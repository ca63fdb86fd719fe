"""Operator rules: ordered ``when`` → ``use`` pairs applied before the learned score.

A rule's conditions are matchers registered by config key (``tools``,
``response_format``, ``prompt_tokens_over``, ``user_regex``, ``key``, ``metadata``,
``private``); every condition a rule gives must hold, and the first rule that matches
decides. The request facts a matcher may look at are in ``RouteContext``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from routers.embed import conversation_text, latest_user_text

CHARS_PER_TOKEN = 3.0  # conservative estimate (no tokenizer needed at decision time)


@dataclass
class RouteContext:
    """What the policy knows about a request besides its model name."""

    body: dict[str, Any]
    key_name: str | None = None
    key_cloud_fraction: float | None = None
    private: bool = False
    budget_share: float | None = None  # share of the key's budget_usd already spent
    downgrade_at: float | None = None  # the key's (or routing's) budget_downgrade_at
    _tokens: int | None = field(default=None, repr=False)

    @property
    def messages(self) -> list[dict]:
        return self.body.get("messages") or []

    def prompt_tokens(self) -> int:
        """Estimated tokens of the whole conversation (characters / 3)."""
        if self._tokens is None:
            chars = len(conversation_text(self.messages, budget_chars=10**9))
            self._tokens = int(chars / CHARS_PER_TOKEN)
        return self._tokens

    def latest_user_text(self) -> str:
        return latest_user_text(self.messages)


Matcher = Callable[[Any, RouteContext], bool]
MATCHERS: dict[str, Matcher] = {}


def matcher(name: str) -> Callable[[Matcher], Matcher]:
    def deco(fn: Matcher) -> Matcher:
        MATCHERS[name] = fn
        return fn
    return deco


@matcher("tools")
def _tools(want: bool, ctx: RouteContext) -> bool:
    return bool(ctx.body.get("tools")) == want


@matcher("response_format")
def _response_format(want, ctx: RouteContext) -> bool:
    fmt = ctx.body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if isinstance(want, bool):
        return (kind is not None and kind != "text") == want
    return kind == want


@matcher("prompt_tokens_over")
def _prompt_tokens_over(limit: int, ctx: RouteContext) -> bool:
    return ctx.prompt_tokens() > limit


@matcher("user_regex")
def _user_regex(pattern: str, ctx: RouteContext) -> bool:
    return re.search(pattern, ctx.latest_user_text()) is not None


@matcher("key")
def _key(names, ctx: RouteContext) -> bool:
    return ctx.key_name in ([names] if isinstance(names, str) else names)


@matcher("metadata")
def _metadata(tags: dict[str, str], ctx: RouteContext) -> bool:
    given = ctx.body.get("metadata")
    return isinstance(given, dict) and all(k in given and str(given[k]) == v
                                           for k, v in tags.items())


@matcher("private")
def _private(want: bool, ctx: RouteContext) -> bool:
    return ctx.private == want


@dataclass(frozen=True)
class Rule:
    name: str
    conditions: dict[str, Any]
    use: str

    def matches(self, ctx: RouteContext) -> bool:
        return all(MATCHERS[k](v, ctx) for k, v in self.conditions.items())


def rules_from_config(configs) -> list[Rule]:
    """``routing.rules`` entries as Rules (named ``rule[i]`` unless given a name)."""
    out = []
    for i, cfg in enumerate(configs):
        conditions = cfg.when.model_dump(exclude_none=True)
        out.append(Rule(cfg.name or f"rule[{i}]", conditions, cfg.use))
    return out


def first_match(rules: list[Rule], ctx: RouteContext) -> Rule | None:
    return next((r for r in rules if r.matches(ctx)), None)
