"""The compose `cpu` stack for real (run by `make deploy-test`, not by `make test`: it
needs a Docker Engine and the images deploy/test-stack.sh builds).

Everything goes through ports published on 127.0.0.1: the official openai SDK against
the gateway (local, cloud, `tandem`, a private-context request), Prometheus's API (its
target, the gateway, is scraped), a restart that finds the models in the volume, and
a `stop` that drains a request in flight and exits cleanly. Timings are written to
$TANDEM_DEPLOY_RECORD (JSON) for docs/DEPLOYMENT.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROJECT = os.environ.get("TANDEM_DEPLOY_PROJECT", "tandem-deploy-test")
PORT = int(os.environ.get("TANDEM_PORT", "8000"))
URL = f"http://127.0.0.1:{PORT}"
RECORD: dict = {}


def compose(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    files = ["-f", str(DEPLOY / "docker-compose.yml"), "-f",
             str(DEPLOY / "docker-compose.local.yml")]
    return subprocess.run(["docker-compose", "-p", PROJECT, *files, "--profile", "cpu",
                           *args], cwd=DEPLOY, check=check, capture_output=True, text=True,
                          timeout=timeout)


def container(service: str) -> str:
    return compose("ps", "-q", service).stdout.strip()


def wait_ready(timeout_s: float) -> float:
    """Seconds until the gateway's /ready answers 200 (its models loaded)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if httpx.get(URL + "/ready", timeout=3).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"gateway not ready after {timeout_s} s:\n"
                         + _logs(container("tandem-cpu"), "--tail", "50"))


@pytest.fixture(scope="module")
def stack():
    compose("down", "-v", check=False)
    started = time.monotonic()
    compose("up", "-d", "--no-build")
    RECORD["cold_start_to_ready_s"] = round(time.monotonic() - started + wait_ready(1800), 1)
    RECORD["cold_start_includes"] = "both models downloaded from PyPI into the volume"
    yield
    compose("down", "-v", check=False)
    RECORD["total_s"] = round(time.monotonic() - started, 1)
    out = os.environ.get("TANDEM_DEPLOY_RECORD")
    if out:
        Path(out).write_text(json.dumps(RECORD, indent=2) + "\n")


def sdk() -> openai.OpenAI:
    return openai.OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0, timeout=600)


def test_the_sdk_gets_answers_from_every_route(stack):
    client = sdk()
    ids = {m.id for m in client.models.list().data}
    assert {"local", "cloud", "tandem"} <= ids, ids
    for model in ("local", "cloud", "tandem"):
        raw = client.chat.completions.with_raw_response.create(
            model=model, max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": "Say hello in one word."}])
        reply = raw.parse()
        assert reply.choices[0].message.content, model
        assert raw.headers["x-tandem-route"] in ("local", "cloud"), raw.headers
        if model != "tandem":
            assert raw.headers["x-tandem-route"] == model
    stream = client.chat.completions.create(model="cloud", max_tokens=8, stream=True,
                                            messages=[{"role": "user", "content": "Count: 1 2"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_private_context_is_answered_locally(stack):
    raw = sdk().chat.completions.with_raw_response.create(
        model="cloud", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "Write one line to my neighbour."}],
        extra_body={"private_context": "My neighbour is Vesna Korlat, vesna.k@example.org."})
    assert raw.headers["x-tandem-privacy"] == "local_only"
    assert raw.headers["x-tandem-route"] == "local"
    assert raw.parse().choices[0].message.content


def test_prometheus_scrapes_the_gateway(stack):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            targets = httpx.get("http://127.0.0.1:9090/api/v1/targets", timeout=5).json()
            up = [t for t in targets["data"]["activeTargets"]
                  if t["labels"].get("instance") == "tandem-cpu:8000" and t["health"] == "up"]
            if up:
                break
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(2)
    else:
        raise AssertionError("Prometheus never scraped tandem-cpu:8000")
    q = httpx.get("http://127.0.0.1:9090/api/v1/query",
                  params={"query": 'up{instance="tandem-cpu:8000"}'}, timeout=5).json()
    assert q["data"]["result"][0]["value"][1] == "1"


def _started_at(cid: str) -> str:
    return json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True,
                                     text=True, check=True).stdout)[0]["State"]["StartedAt"]


def _logs(cid: str, *args: str) -> str:
    r = subprocess.run(["docker", "logs", *args, cid], capture_output=True, text=True)
    return r.stdout + r.stderr


def test_a_restart_takes_the_models_from_the_volume(stack):
    cid = container("tandem-cpu")
    before = _started_at(cid)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    compose("restart", "tandem-cpu")
    RECORD["warm_start_to_ready_s"] = round(wait_ready(600), 1)
    assert _started_at(cid) > before  # a new process, in the same container and volume
    text = _logs(cid, "--since", since)
    assert "Started server process" in text, text[-2000:]
    assert "tandem: fetching" not in text  # no second download
    ready = httpx.get(URL + "/ready", timeout=5).json()
    assert "/home/tandem/.cache/tandem/models/" in ready["models"]["local"]["detail"]
    assert sdk().chat.completions.create(model="local", max_tokens=4, messages=[
        {"role": "user", "content": "hi"}]).choices[0].message.content is not None


def test_stop_drains_a_request_in_flight_and_exits_cleanly(stack):
    """SIGTERM arrives while a stream is mid-answer (its first chunk is in): the stream
    still ends with a finish reason, and the process exits 0 after draining."""
    result: dict = {"chunks": 0}
    streaming = threading.Event()

    def ask() -> None:
        try:
            stream = sdk().chat.completions.create(
                model="local", max_tokens=160, temperature=0, stream=True,
                messages=[{"role": "user", "content": "Write a long story about a fox."}])
            for chunk in stream:
                result["chunks"] += 1
                streaming.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    result["finish"] = chunk.choices[0].finish_reason
        except Exception as err:  # noqa: BLE001 - reported below
            result["error"] = repr(err)
        finally:
            streaming.set()

    thread = threading.Thread(target=ask)
    thread.start()
    assert streaming.wait(120), "the stream never started"
    cid = container("tandem-cpu")
    compose("stop", "-t", "60", "tandem-cpu")
    thread.join(120)
    logs = _logs(cid, "--tail", "60")
    assert result.get("finish") in ("stop", "length"), (result, logs)
    assert result["chunks"] > 2, result
    assert "Waiting for connections to close" in logs  # it was in flight at SIGTERM
    state = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True,
                                      text=True, check=True).stdout)[0]["State"]
    assert state["ExitCode"] == 0, state
    assert not state["OOMKilled"]
    assert "Application shutdown complete" in logs
