"""Learning from traffic through a real gateway (local llama.cpp model, llama_cpp.server as
the cloud, the openai SDK): feedback and its errors, retraining under load and its gate,
a failed retrain, the judge, and labels shared through Redis."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import openai
import pytest

from routers.learning import held_out
from tests.support.learning import (ask, chat_body, learning_config, post, route, router_status,
                                    start_learning_gateway, write_checkpoint)
from tests.support.prompts import EASY, HARD
from tests.support.redis_server import redis_server
from tests.support.servers import start_gateway


@pytest.fixture(scope="module")
def learner(local_model_path, cloud_server, workdir):
    gw = start_learning_gateway("learner", local_model_path, cloud_server.url + "/v1",
                                workdir, {"retrain_every": 12, "holdout": 0.3,
                                          "feedback_ttl_s": 30, "min_heldout": 2})
    yield gw
    gw.stop()


def test_feedback_rejects_bad_input_with_openai_errors(learner):
    headers, _ = ask(learner, EASY[2])
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
        r = post(learner, "/v1/tandem/feedback", body)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error"
        assert error["param"] == param, (body, error)
    other_key = post(learner, "/v1/tandem/feedback", {"request_id": rid, "score": 1},
                      key="sk-bob")
    assert other_key.status_code == 404  # another key's request
    explicit, _ = ask(learner, EASY[2], model="local")  # not routed: nothing to learn
    r = post(learner, "/v1/tandem/feedback", {"request_id": explicit["x-request-id"],
                                               "score": 1})
    assert r.status_code == 404
    ok = post(learner, "/v1/tandem/feedback", {"request_id": rid, "score": 1})
    assert ok.status_code == 200 and ok.json()["role"] == "weak"


def test_feedback_expires_with_its_ttl(local_model_path, cloud_server, workdir):
    tmp = workdir / "ttl"
    tmp.mkdir()
    write_checkpoint(tmp / "c.npz")
    gw = start_gateway(learning_config(local_model_path, cloud_server.url + "/v1", tmp / "c.npz", tmp,
                               {"feedback_ttl_s": 1.0}), tmp, name="ttl")
    try:
        headers, _ = ask(gw, EASY[0])
        time.sleep(1.5)
        r = post(gw, "/v1/tandem/feedback", {"request_id": headers["x-request-id"],
                                              "score": 1})
        assert r.status_code == 404 and "expired" in r.json()["error"]["message"]
    finally:
        gw.stop()


def _wait_retrain(gw, done: int, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = router_status(gw)
        last = status["learning"]["last_retrain"]
        if last is not None and status["learning"]["trained_on_labels"] >= done \
                and not status["learning"]["retraining"]:
            return status
        time.sleep(0.3)
    raise AssertionError(f"no retrain after {done} labels: {router_status(gw)}")


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

    before = router_status(learner)
    asyncio.run(run())
    status = _wait_retrain(learner, before["labels"] + 24)
    assert status["labels"] >= before["labels"] + 24
    # no retrain failed (on a few held-out labels any verdict is possible, and a random
    # split may leave too few to judge on: the verdicts themselves are tested below), and
    # the version counts the accepted ones
    outcomes = [h["outcome"] for h in status["learning"]["history"]]
    assert outcomes and set(outcomes) <= {"accepted", "rejected", "skipped"}, status
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
    assert route(learner, chat_body(HARD[0]))["model"] == "cloud"


def _serve_one(gw, i: int, request_id: str | None = None) -> tuple[str, bool]:
    """Request i through `router-classifier-1.0` (always the weak model, remembered for
    feedback); (request id, is the prompt hard)."""
    hard = i % 2 == 0
    extra = {"extra_headers": {"x-request-id": request_id}} if request_id else {}
    headers, _ = ask(gw, f"{(HARD if hard else EASY)[i // 2 % 6]} #{i}",
                     model="router-classifier-1.0", **extra)
    assert headers["x-tandem-route"] == "local"
    return headers["x-request-id"], hard


def _served(gw, n: int) -> list[tuple[str, bool]]:
    return [_serve_one(gw, i) for i in range(n)]


def _balanced(gw, n: int, share: float) -> list[tuple[str, bool]]:
    """n requests, a quarter in each of (held out, trained on) x (hard, easy): each
    carries an ``x-request-id`` chosen so that the hash split puts it where it should
    (random ids once gave 9 held-out labels of 40 and a skipped gate; serving more until
    the cells filled moved the threshold to recent traffic after 50 requests)."""
    served = []
    for i in range(n):
        pair = i // 2  # a hard and an easy prompt; the six prompts cycle every 6 pairs,
        want = (pair + pair // 6) % 2 == 0  # so each prompt lands on both sides
        rid = next(f"gate-{i}-{k}" for k in range(10_000)
                   if held_out(f"gate-{i}-{k}", share) == want)
        served.append(_serve_one(gw, i, rid))
        assert served[-1][0] == rid
    return served


@pytest.mark.parametrize("truth", ["lies", "inverted"])
def test_the_gate_keeps_a_worse_router_out_and_lets_a_better_one_in(truth, local_model_path,
                                                                    cloud_server, workdir):
    """Feedback says the shipped router is wrong: easy prompts need the strong model and
    hard ones do not. Told consistently ("inverted"), the retrained router is better on
    the held-out labels and serves; told only on the training labels while the held-out
    ones agree with the old router ("lies"), it is worse and is kept out."""
    tmp = workdir / f"gate-{truth}"
    tmp.mkdir()
    write_checkpoint(tmp / "c.npz")
    gw = start_gateway(learning_config(local_model_path, cloud_server.url + "/v1", tmp / "c.npz", tmp,
                               {"retrain_every": 40, "holdout": 0.5, "traffic_weight": 50,
                                "min_heldout": 10}),
                       tmp, name="worse")
    try:
        served = _balanced(gw, 40, share=0.5)
        for rid, hard in served:
            believed = 0.0 if hard else 1.0  # what the shipped router believes of the weak
            if truth == "inverted" or not held_out(rid, 0.5):
                score = 1.0 - believed
            else:
                score = believed
            assert post(gw, "/v1/tandem/feedback", {"request_id": rid,
                                                     "score": score}).status_code == 200
        status = _wait_retrain(gw, 40)
        last = status["learning"]["last_retrain"]
        assert "held-out traffic" in last["gate"]
        if truth == "lies":
            assert last["outcome"] == "rejected", last
            assert last["new_apgr"] < last["old_apgr"]
            assert status["checkpoint"]["version"] == 1
            assert route(gw, chat_body(HARD[0]))["model"] == "cloud"  # old router serving
        else:
            assert last["outcome"] == "accepted", last
            assert last["new_apgr"] > last["old_apgr"]
            assert status["checkpoint"]["version"] == 2
            probe = route(gw, chat_body(HARD[0] + " #1"))
            assert probe["model"] == "local", (probe, router_status(gw))  # new one
    finally:
        gw.stop()


def test_a_failed_retrain_changes_nothing(local_model_path, cloud_server, workdir):
    tmp = workdir / "failing"
    tmp.mkdir()
    write_checkpoint(tmp / "c.npz")
    blocker = tmp / "not-a-dir"
    blocker.write_text("a file where the checkpoint directory should be")
    gw = start_gateway(learning_config(local_model_path, cloud_server.url + "/v1", tmp / "c.npz", tmp,
                               {"retrain_every": 20, "holdout": 0.5, "min_heldout": 1,
                                "checkpoint_dir": str(blocker / "x")}),
                       tmp, name="failing")
    try:
        for rid, hard in _served(gw, 20):
            post(gw, "/v1/tandem/feedback", {"request_id": rid, "score": 0.0 if hard else 1.0})
        status = _wait_retrain(gw, 20)
        assert status["learning"]["last_retrain"]["outcome"] == "failed"
        assert "error" in status["learning"]["last_retrain"]
        assert status["checkpoint"]["version"] == 1
        headers, reply = ask(gw, HARD[0])
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
    tmp = workdir / "replicas"
    tmp.mkdir()
    write_checkpoint(tmp / "c.npz")
    gateways = []
    with redis_server() as url:
        try:
            config = learning_config(local_model_path, cloud_server.url + "/v1", tmp / "c.npz",
                                     tmp, {"retrain_every": 4, "poll_s": 0.5},
                                     state={"redis_url": url})
            gateways = [start_gateway(config, tmp, name=f"learner{i}") for i in range(2)]
            a, b = gateways
            ids = [ask(a, t)[0]["x-request-id"] for t in (EASY[0], HARD[0])]
            ids += [ask(b, t)[0]["x-request-id"] for t in (EASY[1], HARD[1])]
            for rid in ids[:2]:  # served by a, rated through b
                assert post(b, "/v1/tandem/feedback", {"request_id": rid, "score": 1}
                            ).status_code == 200
            for rid in ids[2:]:  # served by b, rated through a
                assert post(a, "/v1/tandem/feedback", {"request_id": rid, "score": 1}
                            ).status_code == 200
            assert router_status(a)["labels"] == router_status(b)["labels"] == 4
            for gw in gateways:  # both retrain on the shared labels (b's poller finds them)
                assert _wait_retrain(gw, 4)["learning"]["trained_on_labels"] == 4
        finally:
            for gw in gateways:
                gw.stop()


def test_a_judge_model_labels_answers_nobody_rated(local_model_path, cloud_server, workdir):
    tmp = workdir / "judged"
    tmp.mkdir()
    write_checkpoint(tmp / "c.npz")
    gw = start_gateway(learning_config(local_model_path, cloud_server.url + "/v1", tmp / "c.npz", tmp,
                               {"judge": {"model": "local", "sample": 1.0}}), tmp, name="judged")
    try:
        headers, _ = ask(gw, EASY[3])
        ask(gw, EASY[1], extra_body={"private_context": "My name is Vesna Korlat."})  # not judged
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and router_status(gw)["labels"] < 1:
            time.sleep(0.5)
        time.sleep(3)  # time for a (wrong) judgement of the private request to land
        assert router_status(gw)["labels"] == 1
        metrics = httpx.get(gw.url + "/metrics", timeout=10).text
        assert 'tandem_router_labels_total{role="weak",source="judge"} 1.0' in metrics
        # the caller's own feedback on the same request is stored beside it and wins
        r = post(gw, "/v1/tandem/feedback", {"request_id": headers["x-request-id"],
                                              "score": 0.0})
        assert r.status_code == 200 and r.json()["labels"] == 2
    finally:
        gw.stop()


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_killed_gateway_leaves_no_retrain_worker(local_model_path, cloud_server, workdir):
    """SIGKILL gives the gateway no chance to shut its worker pool down: the retrain
    worker notices its parent is gone and exits (an orphan would hold memory for good)."""
    gw = start_learning_gateway("orphan", local_model_path, cloud_server.url + "/v1",
                                workdir, learning={"retrain_every": 2})
    try:
        for i in range(2):
            headers, _ = ask(gw, f"{EASY[i]} (orphan {i})")
            assert post(gw, "/v1/tandem/feedback", {"request_id": headers["x-request-id"],
                                                    "score": 1.0}).status_code == 200
        _wait_retrain(gw, 2)
        workers = _children(gw.proc.pid)
        assert workers, "the retrain ran in no worker process"
        pool = [w for w in workers  # (the other child is multiprocessing's resource tracker)
                if b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes()]
        assert pool, "no retrain worker among the gateway's children"
        cpus = sorted(os.sched_getaffinity(0))
        for w in pool:  # every thread of it (numpy's BLAS pool too) yields to serving,
            for tid in os.listdir(f"/proc/{w}/task"):  # on one core, the last one
                assert os.sched_getscheduler(int(tid)) == os.SCHED_IDLE, (w, tid)
                assert os.sched_getaffinity(int(tid)) == {cpus[-1]}, (w, tid)
    finally:
        gw.proc.kill()
        gw.proc.wait(10)
        gw.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()], workers


def test_labels_that_arrive_during_a_retrain_start_the_next_one(local_model_path, cloud_server,
                                                               workdir):
    """A retrain is skipped while another runs; the labels that came in meanwhile start
    the next one when it ends, with no further label needed (and no poll of the store:
    its interval is an hour here)."""
    gw = start_learning_gateway("catchup", local_model_path, cloud_server.url + "/v1",
                                workdir, learning={"retrain_every": 2, "poll_s": 3600})
    try:
        ids = [ask(gw, f"{EASY[i]} (catch-up {i})")[0]["x-request-id"] for i in range(4)]
        for i, rid in enumerate(ids):  # labels 3 and 4 land while the first retrain runs
            assert post(gw, "/v1/tandem/feedback", {"request_id": rid,
                                                    "score": 1.0}).status_code == 200
            if i == 1:
                assert router_status(gw)["learning"]["retraining"]
        status = _wait_retrain(gw, 4)
        assert status["learning"]["trained_on_labels"] == 4
        assert len(status["learning"]["history"]) == 2
    finally:
        gw.stop()


def test_the_worker_is_sent_only_new_labels_and_a_dead_one_is_replaced(
        local_model_path, cloud_server, workdir):
    """Each retrain sends the worker only the labels it has not seen (it keeps the rest),
    yet trains on all of them; after the worker is killed, the next retrain starts a new
    one, sends it every label, and does not fail."""
    gw = start_learning_gateway("incremental", local_model_path, cloud_server.url + "/v1",
                                workdir, learning={"retrain_every": 2, "poll_s": 3600,
                                                   "holdout": 0.0})

    def label_two(first: int) -> dict:
        for i in range(first, first + 2):
            headers, _ = ask(gw, f"{EASY[i % 6]} (incremental {i})")
            assert post(gw, "/v1/tandem/feedback", {"request_id": headers["x-request-id"],
                                                    "score": 1.0}).status_code == 200
        return _wait_retrain(gw, first + 2)["learning"]["last_retrain"]

    try:
        assert label_two(0)["traffic_labels"] == 2
        assert label_two(2)["traffic_labels"] == 4  # 2 sent, 2 kept from before
        pool = [w for w in _children(gw.proc.pid)
                if b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes()]
        assert pool, "no retrain worker among the gateway's children"
        for w in pool:
            os.kill(w, 9)
        last = label_two(4)
        assert last["outcome"] != "failed", last
        assert last["traffic_labels"] == 6  # the new worker was sent all of them
    finally:
        gw.stop()
