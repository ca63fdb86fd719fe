"""API keys, limits and budgets: SQLite in one gateway, Redis shared by two."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from server.auth import hash_key
from tests.support.servers import free_port, start_gateway

MSG = [{"role": "user", "content": "hi"}]


def _config(fault_url: str, state: dict) -> dict:
    upstream = {"backend": "openai", "base_url": fault_url, "model": "fault", "max_retries": 0,
                # the fake upstream reports 3 prompt + 2 completion tokens: $0.50 a request
                "price_input_per_mtok": 100_000, "price_output_per_mtok": 100_000}
    return {
        "models": {"cloud": upstream, "other": {**upstream}},
        "routing": {"default": "cloud"},
        "auth": {"keys": [
            {"name": "app", "key_sha256": hash_key("sk-app"), "models": ["cloud", "tandem"],
             "rpm": 4},
            {"name": "tokens", "key_sha256": hash_key("sk-tokens"), "tpm": 8},
            {"name": "budget", "key_sha256": hash_key("sk-budget"), "budget_usd": 0.9},
        ]},
        "state": state,
    }


def _chat(gw, key: str | None, model: str = "cloud") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gw.url + "/v1/chat/completions", headers=headers,
                      json={"model": model, "messages": MSG}, timeout=30)


@pytest.fixture(scope="module")
def keyed_gateway(fault, workdir):
    fault.script()
    gw = start_gateway(_config(fault.url, {"sqlite_path": str(workdir / "state.sqlite")}),
                       workdir, name="keyed")
    yield gw
    gw.stop()


def _wait_new_window() -> None:
    """Limits use fixed minute windows: start a test early in one."""
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)


def test_missing_or_wrong_key_is_401_but_health_is_open(keyed_gateway):
    for key in (None, "sk-wrong"):
        r = _chat(keyed_gateway, key)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers.get("x-request-id")
    assert httpx.get(keyed_gateway.url + "/health").status_code == 200
    assert httpx.get(keyed_gateway.url + "/v1/models").status_code == 401
    ok = httpx.get(keyed_gateway.url + "/v1/models", headers={"authorization": "Bearer sk-app"})
    assert ok.status_code == 200


def test_model_not_allowed_is_403(keyed_gateway):
    r = _chat(keyed_gateway, "sk-app", model="other")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "model_not_allowed"


def test_requests_per_minute_limit_is_429_with_retry_after(keyed_gateway):
    _wait_new_window()
    statuses = [_chat(keyed_gateway, "sk-app").status_code for _ in range(6)]
    assert statuses == [200] * 4 + [429] * 2  # a refused model (403) does not count
    r = _chat(keyed_gateway, "sk-app")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_tokens_per_minute_limit(keyed_gateway):
    _wait_new_window()
    assert _chat(keyed_gateway, "sk-tokens").status_code == 200  # 5 tokens
    time.sleep(0.3)  # usage is booked just after the response
    assert _chat(keyed_gateway, "sk-tokens").status_code == 200  # 10 tokens, over 8
    time.sleep(0.3)
    r = _chat(keyed_gateway, "sk-tokens")
    assert r.status_code == 429 and "tokens per minute" in r.json()["error"]["message"]


def test_spent_budget_is_402(keyed_gateway):
    assert _chat(keyed_gateway, "sk-budget").status_code == 200  # $0.50
    time.sleep(0.3)
    assert _chat(keyed_gateway, "sk-budget").status_code == 200  # $1.00 > 0.90
    time.sleep(0.3)
    r = _chat(keyed_gateway, "sk-budget")
    assert r.status_code == 402
    assert r.json()["error"]["code"] == "budget_exceeded"


def test_limits_hold_across_two_replicas_sharing_redis(fault, workdir):
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required (make test installs Debian's redis-server)"
    port = free_port()
    redis = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    gateways = []
    try:
        config = _config(fault.url, {"redis_url": f"redis://127.0.0.1:{port}/0"})
        gateways = [start_gateway(config, workdir, name=f"replica{i}") for i in range(2)]
        _wait_new_window()
        fault.script()
        statuses = [_chat(gateways[i % 2], "sk-app").status_code for i in range(6)]
        assert statuses == [200, 200, 200, 200, 429, 429]  # rpm 4 across both replicas
        assert _chat(gateways[0], "sk-budget").status_code == 200
        time.sleep(0.3)
        assert _chat(gateways[1], "sk-budget").status_code == 200
        time.sleep(0.3)
        assert _chat(gateways[0], "sk-budget").status_code == 402
        assert _chat(gateways[1], "sk-budget").status_code == 402
    finally:
        for gw in gateways:
            gw.stop()
        redis.terminate()
        redis.wait(10)
