"""Sticky privacy: a conversation that carried private context in an earlier turn.

Turn 1 marks context private and is answered on the device. The local model's answer
holds the name, the e-mail address and the project code; turn 2 re-sends the whole
history with no declaration (as every chat UI does) and is allowed out (sketch mode).
The cloud (a recording upstream) must receive none of those values; with memory off the
same turn 2 does send them (the test can fail); forgetting makes them ordinary again;
the store holds fingerprints, never the values.
"""

from __future__ import annotations

import secrets
import sqlite3
import string
import time

import httpx
import openai
import pytest

from tests.conftest import _wait_local_loaded
from tests.support.recording_upstream import RecordingUpstream
from tests.support.servers import start_gateway

KEY = "sk-memory-test-" + secrets.token_hex(8)


def _word(n: int) -> str:
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(n))


NAME = "Zo" + _word(6) + " Qu" + _word(6)
MAIL = f"{_word(7)}@{_word(6)}.example"
CODE = f"PRJ-{secrets.randbelow(90000) + 10000}"
CONTEXT = f"Client contact: {NAME} ({MAIL}). Internal project code {CODE}."
VALUES = (NAME.split()[0], NAME.split()[1], MAIL, CODE)


@pytest.fixture(scope="module")
def recording(cloud_server):
    upstream = RecordingUpstream(cloud_server.url).start()
    yield upstream
    upstream.stop()


def _gateway(local_model_path, recording, tmp, name: str, memory: bool,
             state: dict | None = None, ttl_s: float = 86_400.0):
    import hashlib

    config = {
        "models": {
            "local": {"backend": "llama_cpp", "model": str(local_model_path), "n_ctx": 2048},
            "cloud": {"backend": "openai", "base_url": recording.url, "model": "qwen-cloud",
                      "max_retries": 0},
        },
        "routing": {"default": "cloud"},
        "auth": {"keys": [{"name": "app", "key_sha256":
                           hashlib.sha256(KEY.encode()).hexdigest()}]},
        "state": state or {"sqlite_path": str(tmp / f"{name}.sqlite")},
        # without `names`: the capitalised name would make turn 2 private by itself, and
        # this is about what memory alone does
        "privacy": {"mode": "sketch", "sketch_max_tokens": 16,
                    "detectors": ["marked", "overlap", "pii"],
                    "memory": {"enabled": memory, "ttl_s": ttl_s}},
    }
    server = start_gateway(config, tmp, name=name, ready_path="/health")
    _wait_local_loaded(server.url)
    return server


@pytest.fixture(scope="module")
def gateways(local_model_path, recording, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory")
    on = _gateway(local_model_path, recording, tmp, "memory-on", True)
    off = _gateway(local_model_path, recording, tmp, "memory-off", False)
    yield {"on": on, "off": off, "tmp": tmp}
    on.stop()
    off.stop()


def _sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0,
                         timeout=300)


TURN1 = [{"role": "user", "content": "Who is my client contact, and which project is it?"}]
ANSWER = f"Your client contact is {NAME} ({MAIL}); the project is {CODE}."
TURN2 = [*TURN1, {"role": "assistant", "content": ANSWER},
         {"role": "user", "content": "Write a short, friendly reminder e-mail to them."}]


def _leaked(recording, since: int) -> list[str]:
    sent = b"".join(recording.received[since:]).decode("utf-8", "replace").lower()
    return [v for v in VALUES if v.lower() in sent]


def _turn1(server) -> None:
    _sdk(server).chat.completions.create(model="tandem", messages=TURN1, max_tokens=8,
                                         temperature=0, extra_body={"private_context": CONTEXT})


def _turn2(server, recording) -> list[str]:
    before = len(recording.received)
    _sdk(server).chat.completions.create(model="tandem", messages=TURN2, max_tokens=8,
                                         temperature=0)
    assert len(recording.received) > before  # turn 2 was allowed out (sketch)
    return _leaked(recording, before)


def _turns(server, recording) -> list[str]:
    _turn1(server)
    return _turn2(server, recording)


def test_turn_two_without_declaration_sends_nothing_private(gateways, recording):
    assert _turns(gateways["on"], recording) == []


def test_without_memory_the_same_turn_leaks(gateways, recording):
    """The control: a stateless gateway cannot know (this is what memory fixes)."""
    assert set(_turns(gateways["off"], recording)) >= {CODE}


def test_the_store_holds_fingerprints_not_values(gateways):
    db = sqlite3.connect(gateways["tmp"] / "memory-on.sqlite")
    dump = "\n".join(db.iterdump()).lower()
    assert "privacy:mem:" in dump
    assert not [v for v in VALUES if v.lower() in dump]


def test_forget_makes_the_values_ordinary_again(gateways, recording):
    server = gateways["on"]
    r = httpx.post(server.url + "/v1/tandem/privacy/forget", json={},
                   headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["scope"] == "key"
    before = len(recording.received)
    _sdk(server).chat.completions.create(model="tandem", messages=TURN2, max_tokens=8,
                                         temperature=0)
    assert CODE.lower() in " ".join(_leaked(recording, before)).lower()
    bad = httpx.post(server.url + "/v1/tandem/privacy/forget", json={"conversation_id": 5},
                     headers={"authorization": f"Bearer {KEY}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "conversation_id"


def test_two_replicas_share_the_memory_through_redis(local_model_path, recording,
                                                     tmp_path_factory):
    """Turn 1 on one replica, turn 2 on the other: the second knows what the first saw."""
    from tests.support.redis_server import redis_server

    tmp = tmp_path_factory.mktemp("memory-redis")
    with redis_server() as url:
        a = _gateway(local_model_path, recording, tmp, "replica-a", True, {"redis_url": url})
        b = _gateway(local_model_path, recording, tmp, "replica-b", True, {"redis_url": url})
        try:
            _turn1(a)
            assert _turn2(b, recording) == []
        finally:
            a.stop()
            b.stop()


def test_memory_expires_with_its_ttl(local_model_path, recording, tmp_path_factory):
    """Within ttl_s turn 2 is protected; after it, the values are ordinary again."""
    tmp = tmp_path_factory.mktemp("memory-ttl")
    server = _gateway(local_model_path, recording, tmp, "memory-ttl", True, ttl_s=6.0)
    try:
        # a first local answer warms the model up, so that turn 1 (answered locally) does
        # not spend the TTL on it: on a loaded 2-core machine a cold turn 1 took over 3 s
        _sdk(server).chat.completions.create(model="local", max_tokens=2,
                                             messages=[{"role": "user", "content": "hi"}])
        _turn1(server)
        assert _turn2(server, recording) == []
        time.sleep(6.5)
        assert CODE in _turn2(server, recording)
    finally:
        server.stop()
