"""Session fixtures: the real local model, llama_cpp.server as the cloud, a fault
upstream, and one gateway process in front of them all."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.fault_upstream import FaultUpstream
from tests.support.servers import free_port, start_gateway, start_llama_cpp_server

# The compose stack's tests need a Docker Engine and built images: `make deploy-test`
# (deploy/test-stack.sh) sets TANDEM_DEPLOY_TEST=1 and runs them; `make test` does not.
collect_ignore = [] if os.environ.get("TANDEM_DEPLOY_TEST") == "1" else ["deploy"]

LOCAL_MODEL = "qwen2.5-coder-0.5b-instruct"
FLAKY_KEY = "sk-test-secret-never-echoed-123"


@pytest.fixture(scope="session")
def local_model_path() -> Path:
    from clients.model_store import resolve

    return resolve(LOCAL_MODEL, progress=False)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def fault() -> FaultUpstream:
    upstream = FaultUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def cloud_server(local_model_path, workdir):
    server = start_llama_cpp_server(local_model_path, workdir, alias="qwen-cloud")
    yield server
    server.stop()


def gateway_config(local_model_path: Path, cloud_url: str, fault_url: str) -> dict:
    flaky = {"backend": "openai", "base_url": fault_url, "model": "fault",
             "max_retries": 2, "read_timeout_s": 1.5, "connect_timeout_s": 1.0,
             "api_key_env": "TANDEM_TEST_FLAKY_KEY"}
    return {
        "server": {"max_body_bytes": 256 * 1024},
        "models": {
            "local": {"backend": "llama_cpp", "model": str(local_model_path), "n_ctx": 2048},
            "cloud": {"backend": "openai", "base_url": cloud_url, "model": "qwen-cloud",
                      "max_retries": 1},
            "flaky": flaky,
            "flaky-solo": {**flaky, "max_retries": 0},
            "down": {"backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                     "model": "x", "max_retries": 0, "connect_timeout_s": 0.5},
        },
        "routing": {"default": "local", "fallback": ["flaky", "local"],
                    "aliases": {"fast": "local"}},
        # Many modules share this gateway: sticky privacy would make a name one test sent
        # private for every later test (any case), and outcomes depend on their order.
        # It is tested on gateways of its own (test_privacy_memory.py).
        "privacy": {"memory": {"enabled": False}},
    }


def _wait_local_loaded(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        models = httpx.get(url + "/ready", timeout=5).json()["models"]
        if models["local"]["ready"]:
            return
        time.sleep(0.2)
    raise RuntimeError("local model did not load")


@pytest.fixture(scope="session")
def gateway(local_model_path, cloud_server, fault, workdir):
    config = gateway_config(local_model_path, cloud_server.url + "/v1", fault.url)
    server = start_gateway(config, workdir, env={"TANDEM_TEST_FLAKY_KEY": FLAKY_KEY},
                           ready_path="/health")
    _wait_local_loaded(server.url)
    yield server
    server.stop()


@pytest.fixture()
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


@pytest.fixture()
def aclient(gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0,
                              timeout=120)
