"""Observability: Prometheus metrics (its own registry per app) and one JSON access-log
line per request. Neither ever holds message content.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from clients.base import ChatClient
from clients.errors import TandemError

access_log = logging.getLogger("tandem.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _LiveGauges:
    """Gauges read at scrape time: local queue depth, running asyncio tasks."""

    def __init__(self, clients: dict[str, ChatClient]) -> None:
        self.clients = clients

    def collect(self):
        queue = GaugeMetricFamily("tandem_local_queue_depth",
                                  "Requests waiting for a local model", labels=["model"])
        for name, client in self.clients.items():
            if client.capabilities.local:
                queue.add_metric([name], client.queue_depth())
        yield queue
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped outside the event loop
            tasks = 0
        yield GaugeMetricFamily("tandem_asyncio_tasks", "Running asyncio tasks", value=tasks)


class GatewayMetrics:
    def __init__(self, clients: dict[str, ChatClient], prices: dict[str, tuple[float, float]]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.prices = prices  # model -> (USD per 1M input tokens, per 1M output tokens)
        r = self.registry
        self.requests = Counter("tandem_requests", "Chat requests",
                                ["model", "route", "status"], registry=r)
        self.duration = Histogram("tandem_request_duration_seconds", "Whole request time",
                                  ["route", "stream"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tandem_time_to_first_token_seconds", "Streams: first content",
                              ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("tandem_tokens", "Tokens by route", ["route", "direction"],
                              registry=r)
        self.decisions = Counter("tandem_routing_decisions", "Which rule chose the model",
                                 ["rule", "model"], registry=r)
        self.cost = Counter("tandem_cloud_cost_usd", "Estimated upstream spend (config prices)",
                            ["route"], registry=r)
        self.fallbacks = Counter("tandem_fallbacks", "A model failed and the next one took over",
                                 ["from_model", "to_model", "stage"], registry=r)
        self.router_scores = Histogram("tandem_router_p_strong", "Router scores",
                                       ["rule"], buckets=[i / 10 for i in range(1, 11)],
                                       registry=r)
        self.egress_blocks = Counter("tandem_egress_blocks", "Requests blocked before egress",
                                     ["reason"], registry=r)
        self.embeddings = Counter("tandem_embedding_requests", "POST /v1/embeddings requests "
                                  "(also in tandem_requests)", ["route", "status"], registry=r)
        self.router_decision = Histogram(
            "tandem_router_decision_seconds", "Policy decision time (rules, embed, score)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1), registry=r)
        self.router_feedback = Counter("tandem_router_feedback", "Feedback posts by outcome",
                                       ["outcome"], registry=r)
        self.router_labels = Counter("tandem_router_labels", "Labels stored",
                                     ["source", "role"], registry=r)
        self.router_explorations = Counter("tandem_router_explorations",
                                           "Requests sent to the model the router did not pick",
                                           ["model"], registry=r)
        self.router_retrains = Counter("tandem_router_retrains", "Retrains by outcome "
                                       "(accepted, rejected, failed, skipped)", ["outcome"],
                                       registry=r)
        self.router_version = Gauge("tandem_router_checkpoint_version",
                                    "Version of the serving router checkpoint", registry=r)
        self.router_heldout_apgr = Gauge("tandem_router_heldout_apgr",
                                         "Held-out APGR of the serving checkpoint", registry=r)
        self.router_actual_fraction = Gauge(
            "tandem_router_cloud_fraction_actual", "Share of recent router-decided requests "
            "sent to the strong model", registry=r)
        self.router_threshold = Gauge("tandem_router_threshold", "Current `tandem` threshold",
                                      registry=r)
        self._live = _LiveGauges(clients)
        r.register(self._live)

    def use(self, clients: dict[str, ChatClient], prices: dict[str, tuple[float, float]]) -> None:
        """Point the live gauges and cost estimate at a reloaded configuration."""
        self._live.clients = clients
        self.prices = prices

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class RequestRecord:
    """What one request did; finished once, into metrics and the access log."""

    request_id: str
    model: str
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    route: str = ""
    reason: str = ""
    rule: str = ""
    status: int | str = 200
    first_token: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    score: float | None = None  # router p_strong, when a router decided
    api_key: object = None  # the ApiKeyConfig that authenticated the request, if any
    private: bool = False  # the request carried private spans
    done: bool = False
    span: object = None  # the request's OpenTelemetry span (server/tracing.py)

    @classmethod
    def begin(cls, state: dict) -> "RequestRecord":
        """The record of a request whose ASGI state (id, authenticated key) is ``state``."""
        return cls(state.get("request_id", ""), model="unknown", stream=False,
                   api_key=state.get("api_key"))

    def failed(self, err: BaseException) -> None:
        """Record how the request ended early: an error's status, 500 for anything
        unexpected, "cancelled" when the caller left."""
        self.status = (err.status if isinstance(err, TandemError)
                       else 500 if isinstance(err, Exception) else "cancelled")

    def usage(self, usage: dict | None) -> None:
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens") or 0
            self.completion_tokens = usage.get("completion_tokens") or 0

    def cost_usd(self, prices: dict[str, tuple[float, float]]) -> float:
        price_in, price_out = prices.get(self.route, (0.0, 0.0))
        return (self.prompt_tokens * price_in + self.completion_tokens * price_out) / 1e6

    def finish(self, metrics: GatewayMetrics | None) -> None:
        if self.done:
            return
        self.done = True
        elapsed = time.perf_counter() - self.started
        route = self.route or "none"
        if metrics is not None:
            metrics.requests.labels(self.model, route, str(self.status)).inc()
            metrics.duration.labels(route, str(self.stream).lower()).observe(elapsed)
            if self.first_token is not None:
                metrics.ttft.labels(route).observe(self.first_token - self.started)
            if self.rule:
                metrics.decisions.labels(self.rule, route).inc()
            if self.score is not None:
                metrics.router_scores.labels(self.rule).observe(self.score)
            if self.prompt_tokens or self.completion_tokens:
                metrics.tokens.labels(route, "in").inc(self.prompt_tokens)
                metrics.tokens.labels(route, "out").inc(self.completion_tokens)
                cost = self.cost_usd(metrics.prices)
                if cost:
                    metrics.cost.labels(route).inc(cost)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("request", extra={"fields": {
                "request_id": self.request_id, "model": self.model, "route": self.route,
                "reason": self.reason, "status": self.status, "stream": self.stream,
                "p_strong": self.score,
                "duration_ms": round(elapsed * 1000, 2),
                "ttft_ms": None if self.first_token is None
                else round((self.first_token - self.started) * 1000, 2),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str, json_logs: bool, access: bool) -> None:
    """Tandem's loggers at ``level``; the access log follows ``access``, not the level."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_logs else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("tandem")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("tandem.access").setLevel(logging.INFO if access else logging.CRITICAL + 1)
