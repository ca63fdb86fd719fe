"""Config reload (admin endpoint and SIGHUP) without dropping requests; graceful shutdown."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
import yaml

from server.auth import hash_key
from tests.support.servers import start_gateway

ADMIN = "sk-admin-test"


def _config(model_path, alias: str) -> dict:
    return {"models": {"local": {"backend": "llama_cpp", "model": str(model_path),
                                 "n_ctx": 1024, "parallel": 2}},
            "routing": {"default": "local", "aliases": {alias: "local"}},
            "auth": {"admin_key_sha256": hash_key(ADMIN)}}


def _stream_in_background(url: str, max_tokens: int) -> dict:
    out: dict = {"lines": []}

    def run():
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=120, json={
                "model": "local", "stream": True, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": "Write a long story."}]}) as r:
            out["status"] = r.status_code
            out["lines"] = [line for line in r.iter_lines() if line]

    out["thread"] = threading.Thread(target=run)
    out["thread"].start()
    return out


@pytest.fixture()
def reloadable(local_model_path, tmp_path):
    gw = start_gateway(_config(local_model_path, "first"), tmp_path, name="reload")
    yield gw, tmp_path / "reload.yaml"
    gw.stop()


def _ids(gw) -> list[str]:
    return [m["id"] for m in httpx.get(gw.url + "/v1/models").json()["data"]]


def test_admin_reload_keeps_in_flight_stream_and_reuses_the_model(reloadable, local_model_path):
    gw, path = reloadable
    running = _stream_in_background(gw.url, 60)
    time.sleep(0.5)
    path.write_text(yaml.safe_dump(_config(local_model_path, "second")))
    r = httpx.post(gw.url + "/admin/reload", headers={"authorization": f"Bearer {ADMIN}"},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["reused"] == ["local"]  # same model config: not loaded again
    assert "second" in _ids(gw) and "first" not in _ids(gw)
    running["thread"].join(120)
    assert running["status"] == 200 and running["lines"][-1] == "data: [DONE]"
    assert not any('"error"' in line for line in running["lines"])


def test_invalid_config_is_rejected_and_old_one_keeps_serving(reloadable):
    gw, path = reloadable
    path.write_text("models: {local: {backend: llama_cpp}}\nrouting: {default: local}\n")
    r = httpx.post(gw.url + "/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_config"
    assert "models.local.llama_cpp.model" in r.json()["error"]["message"]
    assert "first" in _ids(gw)
    wrong = httpx.post(gw.url + "/admin/reload", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_sighup_reloads(reloadable, local_model_path):
    gw, path = reloadable
    path.write_text(yaml.safe_dump(_config(local_model_path, "hup")))
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "hup" not in _ids(gw) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "hup" in _ids(gw)


def test_sigterm_finishes_running_stream_then_exits(local_model_path, tmp_path):
    gw = start_gateway(_config(local_model_path, "x"), tmp_path, name="shutdown")
    try:
        running = _stream_in_background(gw.url, 80)
        time.sleep(0.8)
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(gw.url + "/health", timeout=2)  # no longer accepting
        running["thread"].join(120)
        assert running["lines"][-1] == "data: [DONE]"
        # uvicorn re-raises the signal once shut down: the conventional "ended by SIGTERM".
        assert gw.proc.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in gw.log.read_text()
    finally:
        gw.stop()
