"""The dashboard at /ui and its numbers at /v1/tandem/stats.

A real gateway (the local model, llama_cpp.server as the priced cloud, the fault upstream
for a fallback, the shipped learned router) gets real traffic through the openai SDK;
the stats must match what the responses said (routes, statuses, usage, fallbacks) and
the Prometheus text, and Debian's chromium (driven by Playwright) must draw those same
numbers. A second, keyed gateway whose private-data detection cannot load blocks its
cloud requests at egress: its dashboard needs the admin key, entered in the page's form.
"""

from __future__ import annotations

import random
import shutil

import httpx
import openai
import pytest
from openai.types import CompletionUsage
from prometheus_client import Histogram
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from server.app import create_app
from server.auth import hash_key
from server.config import GatewayConfig
from server.dashboard import Buckets, histograms
from tests.conftest import _wait_local_loaded
from tests.support.prompts import EASY, HARD
from tests.support.servers import start_gateway

PRICE_IN, PRICE_OUT = 0.5, 1.5  # USD per 1M tokens, the cloud's
MSG = [{"role": "user", "content": "say hello"}]
ADMIN, APP_KEY = "sk-dash-admin", "sk-dash-app"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = shutil.which("chromium")
    assert path, "chromium is missing: `make sysdeps` installs it (Debian package)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


# -- the open gateway with real traffic --------------------------------------------------
@pytest.fixture(scope="module")
def dash(local_model_path, cloud_server, fault, workdir):
    config = {
        "models": {
            "local": {"backend": "llama_cpp", "model": str(local_model_path), "n_ctx": 2048},
            "cloud": {"backend": "openai", "base_url": cloud_server.url + "/v1",
                      "model": "qwen-cloud", "max_retries": 0,
                      "price_input_per_mtok": PRICE_IN, "price_output_per_mtok": PRICE_OUT},
            "flaky": {"backend": "openai", "base_url": fault.url, "model": "fault",
                      "max_retries": 0},
        },
        "routing": {"default": "local", "fallback": ["flaky", "local"], "strong": "cloud",
                    "weak": "local", "routers": {"classifier": "broad-classifier"},
                    "embedder": "hashing-4096",
                    "router": {"kind": "classifier", "cloud_fraction": 0.5}},
        # the router's choice is the route: no detector turns a prompt local
        "privacy": {"detectors": ["marked"]},
    }
    server = start_gateway(config, workdir, name="dashboard", ready_path="/health")
    _wait_local_loaded(server.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traffic(dash, fault) -> dict:
    """Both routes, streams, routed requests, a fallback and a 404; what the responses
    said, tallied the way the dashboard should."""
    sdk = openai.OpenAI(base_url=dash.url + "/v1", api_key="unused", max_retries=0,
                        timeout=300)
    seen = {"routes": {}, "tokens": {}, "streams": 0, "tandem": 0, "tandem_cloud": 0,
            "reasons": []}

    def book(route: str, prompt_tokens: int, completion_tokens: int) -> None:
        seen["routes"][route] = seen["routes"].get(route, 0) + 1
        t = seen["tokens"].setdefault(route, [0, 0])
        t[0] += prompt_tokens
        t[1] += completion_tokens

    def ask(model: str, content: str, stream: bool = False) -> str:
        kwargs = dict(model=model, max_tokens=6, temperature=0,
                      messages=[{"role": "user", "content": content}])
        if stream:
            raw = sdk.chat.completions.with_raw_response.create(
                **kwargs, stream=True, stream_options={"include_usage": True})
            chunks = list(raw.parse())
            usage = next((c.usage for c in chunks if c.usage), None)
            if usage is None:  # llama_cpp.server's streams report none: the gateway
                # counts no prompt tokens and one completion token per content chunk
                usage = CompletionUsage(prompt_tokens=0, total_tokens=0, completion_tokens=sum(
                    1 for c in chunks if c.choices and c.choices[0].delta.content))
            seen["streams"] += 1
        else:
            raw = sdk.chat.completions.with_raw_response.create(**kwargs)
            usage = raw.parse().usage
        route = raw.headers["x-tandem-route"]
        book(route, usage.prompt_tokens, usage.completion_tokens)
        seen["reasons"].append(raw.headers["x-tandem-reason"])
        return route

    ask("local", "say hello")
    ask("local", "count to three", stream=True)
    ask("cloud", "name a colour")
    ask("cloud", "spell cat", stream=True)
    for prompt in [*EASY[:3], *HARD[:3]]:
        route = ask("tandem", prompt)
        seen["tandem"] += 1
        seen["tandem_cloud"] += route == "cloud"
    fault.script({"kind": "status", "status": 500})
    assert ask("flaky", "say hello") == "local"  # the fallback
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope", messages=MSG)
    seen["total"] = sum(seen["routes"].values()) + 1
    return seen


def _stats(server, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.url + "/v1/tandem/stats", headers=headers, timeout=10)


def test_stats_match_the_traffic(dash, traffic):
    r = _stats(dash)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    s = r.json()
    assert s["object"] == "tandem.stats" and s["generated_at"] >= s["since"]
    req = s["requests"]
    assert req["total"] == traffic["total"]
    assert req["by_status"] == {"200": traffic["total"] - 1, "404": 1}
    routes = {row["route"]: row for row in req["by_route"]}
    for route, n in traffic["routes"].items():
        assert routes[route]["total"] == n and routes[route]["by_status"] == {"200": n}
    assert routes["local"]["local"] is True and routes["cloud"]["local"] is False
    assert routes["none"]["by_status"] == {"404": 1}
    models = {row["model"]: row["total"] for row in req["by_model"]}
    assert models == {"local": 2, "cloud": 2, "tandem": 6, "flaky": 1, "nope": 1}

    share = s["cloud_share"]
    router = share["router"]
    assert router["target"] == 0.5 and router["window"] == traffic["tandem"]
    assert router["actual"] == pytest.approx(traffic["tandem_cloud"] / traffic["tandem"]), \
        traffic["reasons"]
    assert (router["strong"], router["weak"]) == ("cloud", "local")
    assert 0.0 <= router["threshold"] <= 1.0
    answered = share["answered"]
    assert answered["requests"] == traffic["total"] - 1
    assert answered["cloud"] == traffic["routes"].get("cloud", 0)

    cost = s["cost"]
    local_in, local_out = traffic["tokens"]["local"]
    cloud_in, cloud_out = traffic["tokens"].get("cloud", [0, 0])
    assert cost["reference_model"] == "cloud"
    assert cost["local_tokens"] == {"input": local_in, "output": local_out}
    saved = (local_in * PRICE_IN + local_out * PRICE_OUT) / 1e6
    spent = (cloud_in * PRICE_IN + cloud_out * PRICE_OUT) / 1e6
    assert cost["saved_usd"] == pytest.approx(saved) and saved > 0
    assert cost["actual_usd"] == pytest.approx(spent) and spent > 0
    assert cost["all_cloud_usd"] == pytest.approx(spent + saved)
    assert cost["saved_share"] == pytest.approx(saved / (spent + saved))
    assert "routing.strong" in cost["definition"]

    scores = s["router_scores"]
    assert scores["count"] == traffic["tandem"] == sum(b["count"] for b in scores["bins"])
    assert [b["to"] for b in scores["bins"]] == pytest.approx([i / 10 for i in range(1, 11)])
    assert scores["by_rule"] == {"router-classifier": traffic["tandem"]}

    assert s["fallbacks"] == {"total": 1, "data": [
        {"from": "flaky", "to": "local", "stage": "before_first_byte", "count": 1}]}
    assert s["privacy"] == {"blocks_total": 0, "blocks_by_reason": {}}

    lat = s["latency"]
    assert lat["estimated_from_buckets"] is True
    request = lat["request_seconds"]
    assert request["all"]["count"] == traffic["total"]
    assert request["by_route"]["local"]["count"] == traffic["routes"]["local"]
    assert 0 < request["all"]["p50"] <= request["all"]["p95"] <= request["all"]["p99"]
    assert lat["ttft_seconds"]["all"]["count"] == traffic["streams"]
    assert set(request["all"]) == {"count", "mean", "p50", "p90", "p95", "p99"}


def test_stats_agree_with_prometheus(dash, traffic):
    text = httpx.get(dash.url + "/metrics").text
    stats = _stats(dash).json()
    total = tokens = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tandem_requests_total":
                total += sample.value
            if sample.name == "tandem_tokens_total" and sample.labels["route"] == "local":
                tokens += sample.value
    assert total == stats["requests"]["total"]
    assert tokens == sum(stats["cost"]["local_tokens"].values())


def test_page_draws_the_live_numbers(dash, traffic, browser):
    stats = _stats(dash).json()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []  # script errors and CSP refusals both land here
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(dash.url + "/ui")
    page.wait_for_selector("body[data-state=live]", timeout=15_000)
    value = lambda sel: page.get_attribute(sel, "data-value")  # noqa: E731

    assert value("#kpi-requests") == str(traffic["total"])
    assert value("#kpi-fallbacks") == "1" and value("#kpi-blocks") == "0"
    for route, n in traffic["routes"].items():
        bar = f'#chart-routes g[data-name="{route}"]'
        assert value(bar) == str(n)
        assert value(f'{bar} rect[data-status="2xx"]') == str(n)
    assert value('#chart-routes g[data-name="none"] rect[data-status="4xx"]') == "1"
    bins = page.eval_on_selector_all("#chart-scores rect[data-bin]",
                                     "rs => rs.map(r => Number(r.dataset.value))")
    assert bins == [b["count"] for b in stats["router_scores"]["bins"]]
    threshold = float(page.get_attribute("#chart-scores line[data-threshold]",
                                         "data-threshold"))
    assert threshold == pytest.approx(stats["router_scores"]["threshold"])
    share = stats["cloud_share"]["router"]
    assert page.text_content('[data-share-label="actual"]') == f"{100 * share['actual']:.1f}%"
    assert page.text_content('[data-share-label="target"]') == "50.0%"
    assert float(value('[data-cost="saved"]')) == pytest.approx(stats["cost"]["saved_usd"])
    assert value('[data-fallback="flaky>local"] td:last-child') == "1"
    p50 = value('tr[data-series="all"] td[data-latency="request"][data-q="p50"]')
    assert float(p50) == pytest.approx(stats["latency"]["request_seconds"]["all"]["p50"])
    streams = value('tr[data-series="all"] td[data-latency="ttft"][data-q="count"]')
    assert streams == str(traffic["streams"])
    assert "estimated from histogram buckets" in page.text_content("#dashboard")
    assert "routing.strong" in page.text_content("#cost-definition")

    # live: one more request shows up at the next poll, without a reload
    openai.OpenAI(base_url=dash.url + "/v1", api_key="unused", max_retries=0).chat \
        .completions.create(model="local", max_tokens=2, messages=MSG)
    page.wait_for_selector(f'#kpi-requests[data-value="{traffic["total"] + 1}"]',
                           timeout=15_000)
    page.close()
    assert errors == []
    traffic["total"] += 1
    traffic["routes"]["local"] += 1


def test_ui_paths_and_methods(dash):
    page = httpx.get(dash.url + "/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="ui/dashboard.js"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        r = httpx.get(f"{dash.url}/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    slash = httpx.get(dash.url + "/ui/")
    assert slash.status_code == 308 and slash.headers["location"] == "../ui"
    missing = httpx.get(dash.url + "/ui/secrets.txt")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    post = httpx.post(dash.url + "/v1/tandem/stats", json={})
    assert post.status_code == 405 and post.json()["error"]["type"] == "invalid_request_error"
    assert "x-request-id" in post.headers  # still inside the request-context middleware


# -- the keyed gateway: admin key, privacy blocks ----------------------------------------
@pytest.fixture(scope="module")
def keyed(fault, workdir):
    config = {
        "models": {"cloud": {"backend": "openai", "base_url": fault.url, "model": "fault",
                             "max_retries": 0, "price_input_per_mtok": PRICE_IN,
                             "price_output_per_mtok": PRICE_OUT}},
        "routing": {"default": "cloud"},
        "auth": {"keys": [{"name": "app", "key_sha256": hash_key(APP_KEY)}],
                 "admin_key_sha256": hash_key(ADMIN)},
        "state": {"sqlite_path": str(workdir / "dashboard-state.sqlite")},
        # the name pipeline cannot load: detection fails, nothing may leave
        "privacy": {"mode": "redact", "detectors": ["marked", "ner"],
                    "detector_options": {"ner": {"model": "no_such_spacy_pipeline"}}},
    }
    server = start_gateway(config, workdir, name="dashboard-keyed", ready_path="/health")
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=APP_KEY, max_retries=0)
    fault.script()
    for _ in range(2):
        with pytest.raises(openai.PermissionDeniedError) as err:
            sdk.chat.completions.create(model="cloud", messages=MSG)
        assert err.value.body["code"] == "egress_blocked"
    yield server
    server.stop()


def test_stats_need_the_admin_key(keyed):
    for key in (None, "sk-wrong", APP_KEY):  # an API key is not the admin key
        r = _stats(keyed, key)
        assert r.status_code == 401, key
        assert r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        assert error["code"] == "invalid_api_key" and set(error) == {
            "message", "type", "param", "code"}
    ok = _stats(keyed, ADMIN)
    assert ok.status_code == 200
    s = ok.json()
    assert s["privacy"] == {"blocks_total": 2, "blocks_by_reason": {"detection_failed": 2}}
    assert s["requests"]["by_status"] == {"403": 2}
    assert s["cloud_share"]["router"] is None
    # the page itself holds no numbers: it loads, and asks for the key
    assert httpx.get(keyed.url + "/ui").status_code == 200
    # everything else still wants an API key
    assert httpx.get(keyed.url + "/v1/models").status_code == 401


def test_page_asks_for_the_admin_key(keyed, browser):
    page = browser.new_page()
    page.goto(keyed.url + "/ui")
    page.wait_for_selector("body[data-state=login]", timeout=15_000)
    assert page.is_visible("#login") and not page.is_visible("#dashboard")
    page.fill("#key", "sk-wrong")
    page.click("#login button[type=submit]")
    page.wait_for_selector("#login-error:not(:empty)")
    assert page.text_content("#login-error") == "Incorrect admin key."
    assert page.evaluate("sessionStorage.length") == 0  # a wrong key is not kept

    page.fill("#key", ADMIN)
    page.click("#login button[type=submit]")
    page.wait_for_selector("body[data-state=live]", timeout=15_000)
    assert page.get_attribute("#kpi-blocks", "data-value") == "2"
    assert page.get_attribute('[data-block="detection_failed"] td:last-child',
                              "data-value") == "2"
    assert page.get_attribute('#chart-routes g[data-name="none"] rect[data-status="4xx"]',
                              "data-value") == "2"
    page.reload()  # the key lives in this tab's session storage
    page.wait_for_selector("body[data-state=live]", timeout=15_000)
    page.click("#logout")
    page.wait_for_selector("body[data-state=login]", timeout=15_000)
    page.close()


# -- in-process: the configurations without numbers, and the bucket arithmetic -----------
def _app(**extra) -> object:
    config = {"models": {"cloud": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1",
                                   "model": "x"}},
              "routing": {"default": "cloud"}, **extra}
    return create_app(GatewayConfig.model_validate(config))


def _get(app, path: str, key: str | None = None) -> httpx.Response:
    """In-process, lifespan not run (nothing starts); TestClient's own loop thread, as
    Playwright's sync API keeps one running in this one."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return TestClient(app).get(path, headers=headers)


def test_keys_without_an_admin_key_close_the_numbers(tmp_path):
    app = _app(auth={"keys": [{"name": "a", "key_sha256": hash_key("sk-a")}]},
               state={"sqlite_path": str(tmp_path / "state.sqlite")})
    r = _get(app, "/v1/tandem/stats", "sk-a")
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_metrics_off_means_no_numbers():
    app = _app(server={"metrics": False})
    r = _get(app, "/v1/tandem/stats")
    assert r.status_code == 404 and r.json()["error"]["code"] == "metrics_disabled"
    assert _get(app, "/ui").status_code == 200


def test_no_prices_means_no_saving_claimed():
    s = _get(_app(), "/v1/tandem/stats").json()
    assert s["cost"]["reference_model"] is None and s["cost"]["saved_usd"] is None
    assert s["requests"]["total"] == 0 and s["latency"]["request_seconds"]["all"]["p50"] is None
    assert [b["count"] for b in s["router_scores"]["bins"]] == [0] * 10


def test_bucket_quantiles_follow_the_data():
    registry = CollectorRegistry()
    h = Histogram("t", "t", ["route"], buckets=[i / 20 for i in range(1, 21)],
                  registry=registry)
    rng = random.Random(7)
    values = sorted(rng.random() for _ in range(4000))
    for i, v in enumerate(values):
        h.labels("a" if i % 2 else "b").observe(v)
    merged = histograms(h, None)["all"]
    assert merged.count == 4000 and merged.total == pytest.approx(sum(values))
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values))]
        assert merged.quantile(q) == pytest.approx(exact, abs=0.05 / 2)  # half a bucket
    by = histograms(h, "route")
    assert set(by) == {"a", "b"} and by["a"].count == by["b"].count == 2000
    high = Buckets()
    high.cumulative.update({1.0: 0, float("inf"): 5})
    high.count = 5
    assert high.quantile(0.5) == 1.0  # past the last bucket: its bound, all it can say
    assert Buckets().quantile(0.5) is None
