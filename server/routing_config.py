"""The ``routing:`` section: which model answers `tandem`, by rules, a learned router and
what it learns from traffic. Validated with the rest of the file (server/config.py)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyRouterConfig(_Strict):
    """The router behind ``tandem``, and either its threshold or the share of cloud calls
    wanted (turned into a threshold from the checkpoint's stored calibration scores, then
    from the scores of recent traffic)."""

    kind: str = Field(description="random, mf, knn or classifier")
    threshold: float | None = Field(None, ge=0, le=1,
                                    description="p_strong >= threshold -> strong")
    cloud_fraction: float | None = Field(
        None, ge=0, le=1, description="share of requests for the strong model; threshold = "
        "the (1 - fraction) quantile of calibration scores, then of recent traffic's")
    track_window: int = Field(
        1000, ge=0, description="recent router scores the cloud_fraction threshold follows "
        "(0: only the checkpoint's calibration scores)")

    @model_validator(mode="after")
    def _one_way_to_decide(self) -> "PolicyRouterConfig":
        if (self.threshold is None) == (self.cloud_fraction is None):
            raise ValueError("give exactly one of threshold or cloud_fraction")
        return self


class WhenConfig(_Strict):
    """Conditions of a rule; every one given must hold."""

    tools: bool | None = Field(None, description="the request has (true) / has no tools")
    response_format: bool | Literal["json_object", "json_schema", "text"] | None = Field(
        None, description="true: any response_format; or one type")
    prompt_tokens_over: int | None = Field(None, ge=0, description="estimated prompt tokens")
    user_regex: str | None = Field(None, description="re.search on the latest user turn")
    key: str | list[str] | None = Field(None, description="name(s) of the API key")
    metadata: dict[str, str] | None = Field(
        None, description="tags in the request's 'metadata' object; all must match")
    private: bool | None = Field(None, description="the request carries private spans")

    @field_validator("user_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a valid regular expression: {err}") from None
        return value

    @model_validator(mode="after")
    def _something(self) -> "WhenConfig":
        if not self.model_dump(exclude_none=True):
            raise ValueError("a rule needs at least one condition")
        return self


class RuleConfig(_Strict):
    """``when`` matches -> ``use`` answers (then its fallback chain). First match wins."""

    name: str | None = Field(None, description="shown in x-tandem-reason and metrics")
    when: WhenConfig
    use: str = Field(description="a configured model")


class JudgeConfig(_Strict):
    """A model that grades answers nobody gave feedback on (off unless configured)."""

    model: str = Field(description="a configured model")
    sample: float = Field(0.1, gt=0, le=1, description="share of answers it grades")


class LearningConfig(_Strict):
    """Learning from served traffic: feedback labels, exploration, gated retraining."""

    enabled: bool = False
    explore: float = Field(0.05, ge=0, le=0.5, description="share of router-decided "
                           "requests sent to the model the router did not pick")
    retrain_every: int = Field(50, ge=1, description="new labels between retrains")
    holdout: float = Field(0.2, ge=0, lt=1, description="share of traffic labels kept to "
                           "judge a new checkpoint (by a hash of the request id)")
    min_heldout: int = Field(30, ge=1, description="held-out traffic labels needed before "
                             "a new checkpoint is judged (and can serve)")
    gate_confidence: float = Field(0.8, ge=0, le=1, description="a new checkpoint serves "
                                   "only if it is no worse on the held-out labels in this "
                                   "share of paired bootstrap resamples of them (0: the "
                                   "point estimate alone decides)")
    traffic_weight: float = Field(3.0, gt=0, description="weight of a traffic label "
                                  "against one row of the shipped label set")
    base_labels: str | None = Field(None, description="label file trained on with the "
                                    "traffic (default: the checkpoint's own)")
    feedback_ttl_s: float = Field(7 * 86400, gt=0, description="how long a response "
                                  "accepts feedback")
    checkpoint_dir: str = Field("~/.cache/tandem/routers",
                                description="where versioned checkpoints are written")
    poll_s: float = Field(15.0, gt=0, description="how often a replica looks for labels "
                          "another replica stored")
    judge: JudgeConfig | None = None


class RoutingConfig(_Strict):
    """Which model answers when the caller asks for ``tandem``, and where to go on failure."""

    default: str = Field(description="model that answers requests for 'tandem'")
    fallback: list[str] = Field(
        default_factory=list,
        description="ordered chain: when a model in it fails before its first byte, "
        "the models after it are tried in order",
    )
    aliases: dict[str, str] = Field(
        default_factory=dict, description="extra names for configured models, e.g. local: qwen"
    )
    strong: str | None = Field(None, description="model a router picks for p_strong >= t")
    weak: str | None = Field(None, description="model a router picks otherwise")
    routers: dict[str, str] = Field(
        default_factory=dict, description="router kind -> checkpoint (.npz path, or the "
        "name of a shipped one: broad-classifier); random needs none")
    router: PolicyRouterConfig | None = Field(None, description="what `tandem` uses")
    embedder: str = Field("hashing-4096", description="prompt embedding for learned routers")
    rules: list[RuleConfig] = Field(default_factory=list,
                                    description="ordered; applied before the router")
    budget_downgrade_at: float | None = Field(
        None, ge=0, le=1, description="a key past this share of its budget_usd gets the "
        "weak model for `tandem` instead of a refusal (per key: auth.keys[].budget_downgrade_at)")
    learning: LearningConfig = Field(default_factory=LearningConfig)

    def check(self, known: set[str]) -> None:
        """Cross-references to models; raises ValueError naming the key path."""
        for role in ("strong", "weak"):
            name = getattr(self, role)
            if name is not None and name not in known:
                raise ValueError(f"routing.{role}: '{name}' is not a configured model")
        if (self.routers or self.router) and not (self.strong and self.weak):
            raise ValueError("routing.routers/router need routing.strong and routing.weak")
        if self.router and self.router.kind != "random" and self.router.kind not in self.routers:
            raise ValueError(f"routing.router.kind: '{self.router.kind}' has no checkpoint in "
                             "routing.routers")
        for i, rule in enumerate(self.rules):
            if rule.use not in known:
                raise ValueError(f"routing.rules[{i}].use: '{rule.use}' is not a configured "
                                 "model")
        if self.budget_downgrade_at is not None and not self.weak:
            raise ValueError("routing.budget_downgrade_at needs routing.weak")
        if self.learning.enabled and not (self.router and self.router.kind in self.routers):
            raise ValueError("routing.learning needs a learned routing.router (mf, knn or "
                             "classifier) with a checkpoint in routing.routers")
        judge = self.learning.judge
        if judge is not None and judge.model not in known:
            raise ValueError(f"routing.learning.judge.model: '{judge.model}' is not a "
                             "configured model")
