"""Routing policy and learning through a real gateway (local llama.cpp model, llama_cpp.server
as the cloud, the openai SDK): rules, per-key fractions, budget downgrade, the dry run,
feedback and its errors, retraining that is gated, and labels shared through Redis."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time

import httpx
import numpy as np
import openai
import pytest

from routers import checkpoint
from routers.embed import HashingEmbedder, conversation_text
from routers.learned import LogisticScorer
from routers.learning import held_out
from server.auth import hash_key
from tests.support.prompts import EASY, HARD
from tests.support.servers import free_port, start_gateway



def _checkpoint(path) -> None:
    """A classifier that knows EASY from HARD, and beside it (``.jsonl``) the label set it
    stands for: the shipped labels a retrain starts from and is gated on."""
    emb = HashingEmbedder(4096)
    X = emb.embed([conversation_text([{"role": "user", "content": t}]) for t in EASY + HARD])
    y = np.array([0.0] * len(EASY) + [1.0] * len(HARD))
    scorer = LogisticScorer.train(X, y, epochs=500, lr=0.05)
    checkpoint.save(path, scorer, emb.name, emb.dim, calibration=np.asarray(scorer.score(X)))
    rows = [{"id": f"{kind}-{j}-{i}", "prompt": f"{t} ({j})", "weak_score": float(kind == "easy"),
             "strong_score": 1.0}
            for kind, texts in (("easy", EASY), ("hard", HARD))
            for i, t in enumerate(texts) for j in range(5)]
    path.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _config(local_model_path, cloud_url: str, ckpt, tmp, learning: dict | None = None,
            state: dict | None = None, rules: list | None = None) -> dict:
    return {
        "models": {
            "local": {"backend": "llama_cpp", "model": str(local_model_path), "n_ctx": 1024},
            "cloud": {"backend": "openai", "base_url": cloud_url, "model": "qwen-cloud",
                      "max_retries": 0, "price_input_per_mtok": 1000.0,
                      "price_output_per_mtok": 1000.0}},
        "routing": {
            "default": "local", "strong": "cloud", "weak": "local",
            "routers": {"classifier": str(ckpt)},
            "router": {"kind": "classifier", "cloud_fraction": 0.5},
            "rules": rules or [],
            "learning": {"enabled": True, "explore": 0.0, "retrain_every": 1000,
                         "base_labels": str(ckpt.with_suffix(".jsonl")),
                         "checkpoint_dir": str(tmp / "routers"), **(learning or {})}},
        "auth": {"keys": [
            {"name": "alice", "key_sha256": hash_key("sk-alice")},
            {"name": "bob", "key_sha256": hash_key("sk-bob"), "cloud_fraction": 0.0},
            {"name": "carol", "key_sha256": hash_key("sk-carol"), "budget_usd": 0.01,
             "budget_downgrade_at": 0.5}]},
        "state": state or {"sqlite_path": str(tmp / "learning.sqlite")},
    }


RULES = [
    {"name": "tools-to-cloud", "when": {"tools": True}, "use": "cloud"},
    {"name": "confidential", "when": {"user_regex": "(?i)confidential"}, "use": "local"},
    {"name": "free-tier", "when": {"metadata": {"tier": "free"}}, "use": "local"},
    {"name": "json-local", "when": {"response_format": "json_object"}, "use": "local"},
    {"name": "long", "when": {"prompt_tokens_over": 200}, "use": "cloud"},
    {"name": "alice-local", "when": {"key": "alice", "private": True}, "use": "local"},
]


@pytest.fixture(scope="module")
def learner(local_model_path, cloud_server, workdir):
    tmp = workdir / "learner"
    tmp.mkdir()
    ckpt = tmp / "classifier.npz"
    _checkpoint(ckpt)
    gw = start_gateway(_config(local_model_path, cloud_server.url + "/v1", ckpt, tmp,
                               {"retrain_every": 12, "holdout": 0.3, "feedback_ttl_s": 30,
                                "min_heldout": 2},
                               rules=RULES), tmp, name="learner")
    gw.checkpoint = ckpt
    yield gw
    gw.stop()


def _sdk(gw, key: str = "sk-alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=120)


def _ask(gw, text: str, key: str = "sk-alice", model: str = "tandem", **extra):
    raw = _sdk(gw, key).chat.completions.with_raw_response.create(
        model=model, max_tokens=1, messages=[{"role": "user", "content": text}], **extra)
    return raw.headers, raw.parse()


def _post(gw, path: str, body, key: str = "sk-alice") -> httpx.Response:
    kwargs = {"content": body} if isinstance(body, (str, bytes)) else {"json": body}
    return httpx.post(gw.url + path, headers={"authorization": f"Bearer {key}"},
                      timeout=60, **kwargs)


def _status(gw, key: str = "sk-alice") -> dict:
    r = httpx.get(gw.url + "/v1/tandem/router", headers={"authorization": f"Bearer {key}"},
                  timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _route(gw, body: dict, key: str = "sk-alice") -> dict:
    r = _post(gw, "/v1/tandem/route", body, key)
    assert r.status_code == 200, r.text
    return r.json()


def _chat_body(text: str, **extra) -> dict:
    return {"model": "tandem", "messages": [{"role": "user", "content": text}], **extra}


TOOL = {"type": "function", "function": {"name": "get_weather",
                                          "parameters": {"type": "object", "properties": {}}}}


def test_dry_run_returns_the_decision_without_generating(learner):
    hard = _route(learner, _chat_body(HARD[0]))
    assert set(hard) >= {"model", "rule", "p_strong", "threshold", "reason"}
    assert hard["model"] == "cloud" and hard["rule"] == "router-classifier"
    assert hard["p_strong"] >= hard["threshold"] and "p_strong=" in hard["reason"]
    easy = _route(learner, _chat_body(EASY[0]))
    assert easy["model"] == "local" and easy["p_strong"] < easy["threshold"]
    explicit = _route(learner, {"model": "cloud", "messages": [{"role": "user", "content": "x"}]})
    assert explicit["model"] == "cloud" and explicit["p_strong"] is None
    bad = _post(learner, "/v1/tandem/route", {"model": "tandem", "messages": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    assert _post(learner, "/v1/tandem/route", "{not json").status_code == 400
    unknown = _post(learner, "/v1/tandem/route", _chat_body("x") | {"model": "nope"})
    assert unknown.status_code == 404


def test_rules_apply_in_order_before_the_router(learner):
    # tools and "confidential" both match: the first rule wins
    both = _route(learner, _chat_body("a confidential " + EASY[0], tools=[TOOL]))
    assert both["rule"] == "rule:tools-to-cloud" and both["model"] == "cloud"
    assert both["p_strong"] is None  # decided before any score
    secret = _route(learner, _chat_body("Confidential: " + HARD[0]))
    assert (secret["rule"], secret["model"]) == ("rule:confidential", "local")
    tagged = _route(learner, _chat_body(HARD[1], metadata={"tier": "free"}))
    assert (tagged["rule"], tagged["model"]) == ("rule:free-tier", "local")
    other_tag = _route(learner, _chat_body(HARD[1], metadata={"tier": "pro"}))
    assert other_tag["rule"] == "router-classifier" and other_tag["model"] == "cloud"
    fmt = _route(learner, _chat_body(HARD[2], response_format={"type": "json_object"}))
    assert fmt["rule"] == "rule:json-local"
    long = _route(learner, _chat_body(EASY[0] + " " + "word " * 200))
    assert (long["rule"], long["model"]) == ("rule:long", "cloud")
    private = _route(learner, _chat_body(EASY[1], private_context="My name is Vesna Korlat."))
    assert private["rule"] == "rule:alice-local" and private["privacy"] is not None
    # the same private request from another key: that rule needs key alice
    bob = _route(learner, _chat_body(EASY[1], private_context="My name is Vesna Korlat."),
                 key="sk-bob")
    assert bob["rule"] == "router-classifier"
    headers, _ = _ask(learner, "confidential: " + HARD[0])
    assert headers["x-tandem-route"] == "local"
    assert "rule 'confidential'" in headers["x-tandem-reason"]


def test_per_key_cloud_fraction(learner):
    alice = _route(learner, _chat_body(HARD[3]))
    bob = _route(learner, _chat_body(HARD[3]), key="sk-bob")
    assert alice["model"] == "cloud"
    assert bob["model"] == "local" and "key 'bob'" in bob["reason"]
    assert bob["threshold"] > alice["threshold"]


def test_budget_downgrade_answers_locally_instead_of_refusing(learner):
    headers, _ = _ask(learner, HARD[4], key="sk-carol")
    assert headers["x-tandem-route"] == "cloud"  # budget untouched: the router decides
    time.sleep(0.5)  # spend is booked after the response
    for _ in range(2):  # past its budget ($0.01 at $1000/Mtok): downgraded, never 402
        headers, reply = _ask(learner, HARD[4], key="sk-carol")
        assert headers["x-tandem-route"] == "local"
        assert "budget" in headers["x-tandem-reason"] and reply.choices
    dry = _route(learner, _chat_body(HARD[4]), key="sk-carol")
    assert dry["rule"] == "budget" and dry["model"] == "local"
    with pytest.raises(openai.APIStatusError) as err:  # asking for the cloud by name
        _ask(learner, HARD[4], key="sk-carol", model="cloud")
    assert err.value.status_code == 402


def test_feedback_rejects_bad_input_with_openai_errors(learner):
    headers, _ = _ask(learner, EASY[2])
    rid = headers["x-request-id"]
    cases = [("{not json", 400, None), ([1, 2], 400, None),
             ({"score": 0.5}, 400, "request_id"), ({"request_id": rid}, 400, "score"),
             ({"request_id": rid, "score": 1.5}, 400, "score"),
             ({"request_id": rid, "score": -0.1}, 400, "score"),
             ({"request_id": rid, "score": "0.5"}, 400, "score"),
             ({"request_id": rid, "score": True}, 400, "score"),
             ({"request_id": rid, "score": 0.5, "extra": 1}, 400, "extra"),
             ({"request_id": "", "score": 0.5}, 400, "request_id"),
             ({"request_id": "no-such-request", "score": 0.5}, 404, "request_id")]
    for body, status, param in cases:
        r = _post(learner, "/v1/tandem/feedback", body)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error"
        assert error["param"] == param, (body, error)
    other_key = _post(learner, "/v1/tandem/feedback", {"request_id": rid, "score": 1},
                      key="sk-bob")
    assert other_key.status_code == 404  # another key's request
    explicit, _ = _ask(learner, EASY[2], model="local")  # not routed: nothing to learn
    r = _post(learner, "/v1/tandem/feedback", {"request_id": explicit["x-request-id"],
                                               "score": 1})
    assert r.status_code == 404
    ok = _post(learner, "/v1/tandem/feedback", {"request_id": rid, "score": 1})
    assert ok.status_code == 200 and ok.json()["role"] == "weak"


def test_feedback_expires_with_its_ttl(local_model_path, cloud_server, workdir):
    tmp = workdir / "ttl"
    tmp.mkdir()
    _checkpoint(tmp / "c.npz")
    gw = start_gateway(_config(local_model_path, cloud_server.url + "/v1", tmp / "c.npz", tmp,
                               {"feedback_ttl_s": 1.0}), tmp, name="ttl")
    try:
        headers, _ = _ask(gw, EASY[0])
        time.sleep(1.5)
        r = _post(gw, "/v1/tandem/feedback", {"request_id": headers["x-request-id"],
                                              "score": 1})
        assert r.status_code == 404 and "expired" in r.json()["error"]["message"]
    finally:
        gw.stop()


def _wait_retrain(gw, done: int, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _status(gw)
        last = status["learning"]["last_retrain"]
        if last is not None and status["learning"]["trained_on_labels"] >= done \
                and not status["learning"]["retraining"]:
            return status
        time.sleep(0.3)
    raise AssertionError(f"no retrain after {done} labels: {_status(gw)}")


def test_learning_under_concurrent_load_retrains_a_new_version(learner):
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=learner.url + "/v1", api_key="sk-alice",
                                    max_retries=0, timeout=300)

        async def one(i: int) -> str:
            text = f"{(HARD + EASY)[i % 12]} (variant {i})"
            raw = await client.chat.completions.with_raw_response.create(
                model="tandem", max_tokens=1, messages=[{"role": "user", "content": text}])
            return raw.headers["x-request-id"], raw.headers["x-tandem-route"]

        served = await asyncio.gather(*(one(i) for i in range(24)))
        async with httpx.AsyncClient(base_url=learner.url, timeout=60, headers={
                "authorization": "Bearer sk-alice"}) as http:
            posts = await asyncio.gather(*(http.post("/v1/tandem/feedback", json={
                "request_id": rid, "score": 1.0 if route == "cloud" or i % 12 >= 6 else 0.0})
                for i, (rid, route) in enumerate(served)))
        assert [p.status_code for p in posts] == [200] * 24, [p.text for p in posts]
        return [rid for rid, _ in served]

    before = _status(learner)
    asyncio.run(run())
    status = _wait_retrain(learner, before["labels"] + 24)
    assert status["labels"] >= before["labels"] + 24
    # every retrain ran to a verdict (on a few held-out labels either is possible; the
    # verdicts themselves are tested below), and the version counts the accepted ones
    outcomes = [h["outcome"] for h in status["learning"]["history"]]
    assert outcomes and set(outcomes) <= {"accepted", "rejected"}, status
    assert status["checkpoint"]["version"] == 1 + outcomes.count("accepted")
    if status["checkpoint"]["version"] > 1:  # written to checkpoint_dir, versioned
        assert "/routers/classifier-v" in status["checkpoint"]["path"]
    assert status["cloud_fraction"]["target"] == 0.5
    assert 0.0 <= status["cloud_fraction"]["actual"] <= 1.0
    metrics = httpx.get(learner.url + "/metrics", timeout=10).text
    assert "tandem_router_retrains_total{outcome=" in metrics
    assert "tandem_router_checkpoint_version" in metrics
    assert 'tandem_router_feedback_total{outcome="accepted"}' in metrics
    assert "tandem_router_decision_seconds_bucket" in metrics
    # the new version serves: the hard prompts still go to the cloud
    assert _route(learner, _chat_body(HARD[0]))["model"] == "cloud"


def _served(gw, n: int) -> list[tuple[str, bool]]:
    """n requests through `router-classifier-1.0` (always the weak model, remembered for
    feedback); (request id, is the prompt hard)."""
    out = []
    for i in range(n):
        hard = i % 2 == 0
        headers, _ = _ask(gw, f"{(HARD if hard else EASY)[i // 2 % 6]} #{i}",
                          model="router-classifier-1.0")
        assert headers["x-tandem-route"] == "local"
        out.append((headers["x-request-id"], hard))
    return out


@pytest.mark.parametrize("truth", ["lies", "inverted"])
def test_the_gate_keeps_a_worse_router_out_and_lets_a_better_one_in(truth, local_model_path,
                                                                    cloud_server, workdir):
    """Feedback says the shipped router is wrong: easy prompts need the strong model and
    hard ones do not. Told consistently ("inverted"), the retrained router is better on
    the held-out labels and serves; told only on the training labels while the held-out
    ones agree with the old router ("lies"), it is worse and is kept out."""
    tmp = workdir / f"gate-{truth}"
    tmp.mkdir()
    _checkpoint(tmp / "c.npz")
    gw = start_gateway(_config(local_model_path, cloud_server.url + "/v1", tmp / "c.npz", tmp,
                               {"retrain_every": 40, "holdout": 0.5, "traffic_weight": 50,
                                "min_heldout": 10}),
                       tmp, name="worse")
    try:
        served = _served(gw, 40)
        for rid, hard in served:
            believed = 0.0 if hard else 1.0  # what the shipped router believes of the weak
            if truth == "inverted" or not held_out(rid, 0.5):
                score = 1.0 - believed
            else:
                score = believed
            assert _post(gw, "/v1/tandem/feedback", {"request_id": rid,
                                                     "score": score}).status_code == 200
        status = _wait_retrain(gw, 40)
        last = status["learning"]["last_retrain"]
        assert "held-out traffic" in last["gate"]
        if truth == "lies":
            assert last["outcome"] == "rejected", last
            assert last["new_apgr"] < last["old_apgr"]
            assert status["checkpoint"]["version"] == 1
            assert _route(gw, _chat_body(HARD[0]))["model"] == "cloud"  # old router serving
        else:
            assert last["outcome"] == "accepted", last
            assert last["new_apgr"] > last["old_apgr"]
            assert status["checkpoint"]["version"] == 2
            assert _route(gw, _chat_body(HARD[0] + " #1"))["model"] == "local"  # new one
    finally:
        gw.stop()


def test_a_failed_retrain_changes_nothing(local_model_path, cloud_server, workdir):
    tmp = workdir / "failing"
    tmp.mkdir()
    _checkpoint(tmp / "c.npz")
    blocker = tmp / "not-a-dir"
    blocker.write_text("a file where the checkpoint directory should be")
    gw = start_gateway(_config(local_model_path, cloud_server.url + "/v1", tmp / "c.npz", tmp,
                               {"retrain_every": 20, "holdout": 0.5, "min_heldout": 1,
                                "checkpoint_dir": str(blocker / "x")}),
                       tmp, name="failing")
    try:
        for rid, hard in _served(gw, 20):
            _post(gw, "/v1/tandem/feedback", {"request_id": rid, "score": 0.0 if hard else 1.0})
        status = _wait_retrain(gw, 20)
        assert status["learning"]["last_retrain"]["outcome"] == "failed"
        assert "error" in status["learning"]["last_retrain"]
        assert status["checkpoint"]["version"] == 1
        headers, reply = _ask(gw, HARD[0])
        assert headers["x-tandem-route"] == "cloud" and reply.choices
    finally:
        gw.stop()


def test_learning_off_feedback_is_a_clear_400(gateway):
    r = httpx.post(gateway.url + "/v1/tandem/feedback", json={"request_id": "x", "score": 1},
                   timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "learning_disabled"
    status = httpx.get(gateway.url + "/v1/tandem/router", timeout=30).json()
    assert status["learning"]["enabled"] is False and status["default"] == "local"


def test_two_replicas_share_labels_through_redis(local_model_path, cloud_server, workdir):
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required (make test installs Debian's redis-server)"
    tmp = workdir / "replicas"
    tmp.mkdir()
    _checkpoint(tmp / "c.npz")
    port = free_port()
    redis = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    gateways = []
    try:
        config = _config(local_model_path, cloud_server.url + "/v1", tmp / "c.npz", tmp,
                         {"retrain_every": 4, "poll_s": 0.5},
                         state={"redis_url": f"redis://127.0.0.1:{port}/0"})
        gateways = [start_gateway(config, tmp, name=f"learner{i}") for i in range(2)]
        a, b = gateways
        ids = [_ask(a, t)[0]["x-request-id"] for t in (EASY[0], HARD[0])]
        ids += [_ask(b, t)[0]["x-request-id"] for t in (EASY[1], HARD[1])]
        for rid in ids[:2]:  # served by a, rated through b
            assert _post(b, "/v1/tandem/feedback", {"request_id": rid, "score": 1}).status_code == 200
        for rid in ids[2:]:  # served by b, rated through a
            assert _post(a, "/v1/tandem/feedback", {"request_id": rid, "score": 1}).status_code == 200
        assert _status(a)["labels"] == _status(b)["labels"] == 4
        for gw in gateways:  # both retrain on the shared labels (b's poller finds them too)
            assert _wait_retrain(gw, 4)["learning"]["trained_on_labels"] == 4
    finally:
        for gw in gateways:
            gw.stop()
        redis.terminate()
        redis.wait(10)


def test_a_judge_model_labels_answers_nobody_rated(local_model_path, cloud_server, workdir):
    tmp = workdir / "judged"
    tmp.mkdir()
    _checkpoint(tmp / "c.npz")
    gw = start_gateway(_config(local_model_path, cloud_server.url + "/v1", tmp / "c.npz", tmp,
                               {"judge": {"model": "local", "sample": 1.0}}), tmp, name="judged")
    try:
        headers, _ = _ask(gw, EASY[3])
        _ask(gw, EASY[1], extra_body={"private_context": "My name is Vesna Korlat."})  # not judged
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _status(gw)["labels"] < 1:
            time.sleep(0.5)
        time.sleep(3)  # time for a (wrong) judgement of the private request to land
        assert _status(gw)["labels"] == 1
        metrics = httpx.get(gw.url + "/metrics", timeout=10).text
        assert 'tandem_router_labels_total{role="weak",source="judge"} 1.0' in metrics
        # the caller's own feedback on the same request is stored beside it and wins
        r = _post(gw, "/v1/tandem/feedback", {"request_id": headers["x-request-id"],
                                              "score": 0.0})
        assert r.status_code == 200 and r.json()["labels"] == 2
    finally:
        gw.stop()
