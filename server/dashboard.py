"""The dashboard: ``GET /ui`` (a static page, server/ui/) and ``GET /v1/tandem/stats``
(its numbers, read from the gateway's own Prometheus registry and live router).

The stats are computed from the counters and histograms, never from a request log, so
their cost does not grow with traffic: a few hundred samples at most, whatever the
request count. Percentiles are estimated from histogram buckets (linear inside a bucket,
as Prometheus' ``histogram_quantile``).

Access: without ``auth.keys`` both are open, like the rest of the gateway. With keys,
the numbers (every key's traffic and spend) are the operator's: the stats need
``Authorization: Bearer <admin key>`` (``auth.admin_key_sha256``); the page, which holds
no data, loads for anyone and asks for the admin key. These paths are answered ahead of
``AuthMiddleware`` (which would want an API key) and check the admin key themselves,
the way ``/admin/`` routes do.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from clients.errors import TandemError
from server.auth import is_admin_key
from server.errors import tandem_error_response
from server.observe import GatewayMetrics

STATS_PATH = "/v1/tandem/stats"
UI_PATH = "/ui"
QUANTILES = (0.5, 0.9, 0.95, 0.99)
# name under /ui/ -> (file in server/ui/, content type)
UI_FILES = {
    "": ("dashboard.html", "text/html; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}
# The page runs only its own files and talks only to its own origin; it handles the
# admin key, so it may not be framed or sniffed either.
PAGE_HEADERS = {"cache-control": "no-cache", "x-content-type-options": "nosniff",
                "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
                "referrer-policy": "no-referrer"}
COST_DEFINITION = (
    "Saved = tokens answered by local models (prompt and completion, as the local model "
    "counted them) priced at the reference cloud model's configured prices. The reference "
    "is routing.strong when it has prices, else the dearest priced model. All-cloud cost = "
    "actual cloud spend + saved; saved share = saved / all-cloud cost. An estimate: a cloud "
    "tokenizer counts somewhat differently and a cloud answer would differ in length.")


# -- reading the registry --------------------------------------------------------------
def _counter(metric) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each series of a Counter."""
    return [(s.labels, s.value) for m in metric.collect() for s in m.samples
            if s.name.endswith("_total")]


@dataclass
class Buckets:
    """One histogram series (or several merged): cumulative counts per upper bound."""

    cumulative: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    count: float = 0.0
    total: float = 0.0  # sum of observations

    def quantile(self, q: float) -> float | None:
        """The q-quantile by linear interpolation inside its bucket; past the last finite
        bucket, that bucket's bound (all a histogram can say)."""
        if not self.count:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for upper in sorted(self.cumulative):
            cum = self.cumulative[upper]
            if cum >= rank:
                if math.isinf(upper):
                    return lower
                inside = cum - below
                return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = upper, cum
        return lower

    def summary(self) -> dict:
        out: dict = {"count": int(self.count),
                     "mean": self.total / self.count if self.count else None}
        for q in QUANTILES:
            out[f"p{round(q * 100)}"] = self.quantile(q)
        return out

    def bins(self) -> list[dict]:
        """Non-cumulative counts per finite bucket: [{from, to, count}]."""
        out, lower, below = [], 0.0, 0.0
        for upper in sorted(self.cumulative):
            if math.isinf(upper):
                break
            cum = self.cumulative[upper]
            out.append({"from": lower, "to": upper, "count": int(cum - below)})
            lower, below = upper, cum
        return out


def histograms(metric, by: str | None) -> dict[str, Buckets]:
    """Series of a Histogram grouped by the label ``by`` (merged over the others);
    ``by=None`` merges everything under ``"all"``."""
    out: dict[str, Buckets] = defaultdict(Buckets)
    for m in metric.collect():
        for s in m.samples:
            key = s.labels.get(by, "") if by else "all"
            if s.name.endswith("_bucket"):
                out[key].cumulative[float(s.labels["le"])] += s.value
            elif s.name.endswith("_count"):
                out[key].count += s.value
            elif s.name.endswith("_sum"):
                out[key].total += s.value
    return out


def _percentiles(metric, by: str) -> dict:
    merged = histograms(metric, None).get("all", Buckets())
    return {"all": merged.summary(),
            "by_route": {k: b.summary() for k, b in sorted(histograms(metric, by).items())}}


# -- the stats --------------------------------------------------------------------------
def _requests(metrics: GatewayMetrics, local: set[str]) -> dict:
    by_route: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_model: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_status: dict[str, int] = defaultdict(int)
    for labels, value in _counter(metrics.requests):
        n = int(value)
        by_route[labels["route"]][labels["status"]] += n
        by_model[labels["model"]][labels["status"]] += n
        by_status[labels["status"]] += n

    def rows(table: dict, key: str) -> list[dict]:
        return [{key: name, "total": sum(s.values()), "by_status": dict(sorted(s.items())),
                 **({"local": name in local} if key == "route" else {})}
                for name, s in sorted(table.items(), key=lambda kv: -sum(kv[1].values()))]

    return {"total": sum(by_status.values()), "by_status": dict(sorted(by_status.items())),
            "by_route": rows(by_route, "route"), "by_model": rows(by_model, "model")}


def _cloud_share(runtime, requests: dict, local: set[str]) -> dict:
    """The live router's window (what it steers: target against actual) and the share of
    all answered requests that a non-local model answered."""
    answered = [r for r in requests["by_route"] if r["route"] != "none"]
    ok = sum(r["by_status"].get("200", 0) for r in answered)
    cloud_ok = sum(r["by_status"].get("200", 0) for r in answered if not r["local"])
    out: dict = {"router": None,
                 "answered": {"requests": ok, "cloud": cloud_ok,
                              "share": cloud_ok / ok if ok else None}}
    live = runtime.policy.live
    if live is not None:
        try:
            threshold = live.threshold()[0]
        except ValueError:  # no calibration for the target: /v1/tandem/router says why
            threshold = None
        out["router"] = {"kind": live.kind, "target": live.cloud_fraction,
                         "actual": live.actual_fraction(), "window": len(live.recent_strong),
                         "threshold": threshold, "strong": runtime.policy.strong,
                         "weak": runtime.policy.weak}
    return out


def _reference_price(runtime, prices: dict[str, tuple[float, float]]
                     ) -> tuple[str | None, tuple[float, float]]:
    strong = runtime.policy.strong
    if strong in prices and any(prices[strong]):
        return strong, prices[strong]
    priced = [(sum(p), name) for name, p in prices.items() if any(p)]
    if not priced:
        return None, (0.0, 0.0)
    name = max(priced)[1]
    return name, prices[name]


def _cost(runtime, metrics: GatewayMetrics, local: set[str]) -> dict:
    spent = sum(v for _, v in _counter(metrics.cost))
    tokens: dict[str, dict[str, int]] = defaultdict(lambda: {"in": 0, "out": 0})
    for labels, value in _counter(metrics.tokens):
        tokens[labels["route"]][labels["direction"]] += int(value)
    local_in = sum(t["in"] for r, t in tokens.items() if r in local)
    local_out = sum(t["out"] for r, t in tokens.items() if r in local)
    ref, (price_in, price_out) = _reference_price(runtime, metrics.prices)
    saved = None if ref is None else (local_in * price_in + local_out * price_out) / 1e6
    all_cloud = None if saved is None else spent + saved
    return {"reference_model": ref,
            "reference_price_per_mtok": {"input": price_in, "output": price_out},
            "actual_usd": spent, "saved_usd": saved, "all_cloud_usd": all_cloud,
            "saved_share": saved / all_cloud if all_cloud else None,
            "local_tokens": {"input": local_in, "output": local_out},
            "tokens_by_route": dict(sorted(tokens.items())),
            "definition": COST_DEFINITION}


def _scores(runtime, metrics: GatewayMetrics, router: dict | None) -> dict:
    merged = histograms(metrics.router_scores, None).get("all", Buckets())
    by_rule = {rule: int(b.count) for rule, b in histograms(metrics.router_scores,
                                                               "rule").items()}
    return {"count": int(merged.count), "bins": merged.bins() or [
        {"from": i / 10, "to": (i + 1) / 10, "count": 0} for i in range(10)],
        "by_rule": by_rule, "threshold": router["threshold"] if router else None}


def compute_stats(runtime, metrics: GatewayMetrics, since: float) -> dict:
    """Everything the page draws, from the registry: O(series), not O(requests)."""
    local = {name for name, c in runtime.clients.items() if c.capabilities.local}
    requests = _requests(metrics, local)
    share = _cloud_share(runtime, requests, local)
    fallbacks = sorted(({"from": l["from_model"], "to": l["to_model"], "stage": l["stage"],
                         "count": int(v)} for l, v in _counter(metrics.fallbacks)),
                       key=lambda f: -f["count"])
    blocks = {l["reason"]: int(v) for l, v in _counter(metrics.egress_blocks)}
    return {
        "object": "tandem.stats", "generated_at": time.time(), "since": since,
        "requests": requests, "cloud_share": share,
        "cost": _cost(runtime, metrics, local),
        "router_scores": _scores(runtime, metrics, share["router"]),
        "fallbacks": {"total": sum(f["count"] for f in fallbacks), "data": fallbacks},
        "privacy": {"blocks_total": sum(blocks.values()),
                    "blocks_by_reason": dict(sorted(blocks.items()))},
        "latency": {"estimated_from_buckets": True, "quantiles": list(QUANTILES),
                    "request_seconds": _percentiles(metrics.duration, "route"),
                    "ttft_seconds": _percentiles(metrics.ttft, "route")},
    }


# -- HTTP -------------------------------------------------------------------------------
def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def check_admin(runtime, request: Request) -> None:
    """Open without API keys; with them, only the admin key."""
    if not runtime.keys:
        return
    admin = runtime.config.auth.admin_key_sha256
    if admin is None:
        raise TandemError("The dashboard's numbers need the admin key, and none is set: "
                          "set auth.admin_key_sha256", status=403, type="permission_error",
                          code="admin_disabled")
    token = _bearer(request)
    if not is_admin_key(token, admin):
        raise TandemError("Missing admin key: send 'Authorization: Bearer <admin key>'."
                          if not token else "Incorrect admin key.", status=401,
                          type="invalid_request_error", code="invalid_api_key",
                          headers={"www-authenticate": "Bearer"})


class DashboardMiddleware:
    """Pure ASGI: answers ``/ui``, ``/ui/*`` and the stats path; passes the rest on."""

    def __init__(self, app, holder, metrics: GatewayMetrics | None) -> None:
        self.app = app
        self.holder = holder
        self.metrics = metrics
        self.since = time.time()
        self._files: dict[str, bytes] = {}  # read on first use, then kept

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != STATS_PATH and path != UI_PATH and not path.startswith(UI_PATH + "/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            if request.method not in ("GET", "HEAD"):
                raise TandemError(f"Method {request.method} not allowed on {path}; use GET",
                                  status=405, type="invalid_request_error",
                                  headers={"allow": "GET, HEAD"})
            response = self.stats(request) if path == STATS_PATH else self.page(path)
        except TandemError as err:
            response = tandem_error_response(err)
        await response(scope, receive, send)

    def stats(self, request: Request) -> Response:
        runtime = self.holder.current
        check_admin(runtime, request)
        if self.metrics is None:
            raise TandemError("Metrics are off (server.metrics: false): the dashboard has no "
                              "numbers", status=404, type="invalid_request_error",
                              code="metrics_disabled")
        return Response(orjson.dumps(compute_stats(runtime, self.metrics, self.since)),
                        media_type="application/json", headers={"cache-control": "no-store"})

    def page(self, path: str) -> Response:
        if path == UI_PATH + "/":  # the page's relative links assume /ui
            return RedirectResponse("../ui", status_code=308)
        name = path[len(UI_PATH) + 1:]
        if name not in UI_FILES:
            raise TandemError(f"No dashboard file '{name}'", status=404,
                              type="invalid_request_error", code="not_found")
        filename, media_type = UI_FILES[name]
        body = self._files.get(filename)
        if body is None:
            body = resources.files("server").joinpath("ui", filename).read_bytes()
            self._files[filename] = body
        return Response(body, media_type=media_type, headers=PAGE_HEADERS)
