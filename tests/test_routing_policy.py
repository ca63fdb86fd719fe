"""The routing policy through a real gateway (local llama.cpp model, llama_cpp.server as
the cloud, the openai SDK): the dry run, operator rules in order, per-key cloud
fractions and the budget downgrade."""

from __future__ import annotations

import time

import openai
import pytest

from tests.support.learning import (RULES, TOOL, ask, chat_body, post, route,
                                    start_learning_gateway)
from tests.support.prompts import EASY, HARD


@pytest.fixture(scope="module")
def policed(local_model_path, cloud_server, workdir):
    gw = start_learning_gateway("policed", local_model_path, cloud_server.url + "/v1",
                                workdir, rules=RULES)
    yield gw
    gw.stop()


def test_dry_run_returns_the_decision_without_generating(policed):
    hard = route(policed, chat_body(HARD[0]))
    assert set(hard) >= {"model", "rule", "p_strong", "threshold", "reason"}
    assert hard["model"] == "cloud" and hard["rule"] == "router-classifier"
    assert hard["p_strong"] >= hard["threshold"] and "p_strong=" in hard["reason"]
    easy = route(policed, chat_body(EASY[0]))
    assert easy["model"] == "local" and easy["p_strong"] < easy["threshold"]
    explicit = route(policed, {"model": "cloud", "messages": [{"role": "user", "content": "x"}]})
    assert explicit["model"] == "cloud" and explicit["p_strong"] is None
    bad = post(policed, "/v1/tandem/route", {"model": "tandem", "messages": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    assert post(policed, "/v1/tandem/route", "{not json").status_code == 400
    unknown = post(policed, "/v1/tandem/route", chat_body("x") | {"model": "nope"})
    assert unknown.status_code == 404


def test_rules_apply_in_order_before_the_router(policed):
    # tools and "confidential" both match: the first rule wins
    both = route(policed, chat_body("a confidential " + EASY[0], tools=[TOOL]))
    assert both["rule"] == "rule:tools-to-cloud" and both["model"] == "cloud"
    assert both["p_strong"] is None  # decided before any score
    secret = route(policed, chat_body("Confidential: " + HARD[0]))
    assert (secret["rule"], secret["model"]) == ("rule:confidential", "local")
    tagged = route(policed, chat_body(HARD[1], metadata={"tier": "free"}))
    assert (tagged["rule"], tagged["model"]) == ("rule:free-tier", "local")
    other_tag = route(policed, chat_body(HARD[1], metadata={"tier": "pro"}))
    assert other_tag["rule"] == "router-classifier" and other_tag["model"] == "cloud"
    fmt = route(policed, chat_body(HARD[2], response_format={"type": "json_object"}))
    assert fmt["rule"] == "rule:json-local"
    long = route(policed, chat_body(EASY[0] + " " + "word " * 200))
    assert (long["rule"], long["model"]) == ("rule:long", "cloud")
    private = route(policed, chat_body(EASY[1], private_context="My name is Vesna Korlat."))
    assert private["rule"] == "rule:alice-local" and private["privacy"] is not None
    # the same private request from another key: that rule needs key alice
    bob = route(policed, chat_body(EASY[1], private_context="My name is Vesna Korlat."),
                 key="sk-bob")
    assert bob["rule"] == "router-classifier"
    headers, _ = ask(policed, "confidential: " + HARD[0])
    assert headers["x-tandem-route"] == "local"
    assert "rule 'confidential'" in headers["x-tandem-reason"]


def test_per_key_cloud_fraction(policed):
    alice = route(policed, chat_body(HARD[3]))
    bob = route(policed, chat_body(HARD[3]), key="sk-bob")
    assert alice["model"] == "cloud"
    assert bob["model"] == "local" and "key 'bob'" in bob["reason"]
    assert bob["threshold"] > alice["threshold"]


def test_budget_downgrade_answers_locally_instead_of_refusing(policed):
    headers, _ = ask(policed, HARD[4], key="sk-carol")
    assert headers["x-tandem-route"] == "cloud"  # budget untouched: the router decides
    time.sleep(0.5)  # spend is booked after the response
    for _ in range(2):  # past its budget ($0.01 at $1000/Mtok): downgraded, never 402
        headers, reply = ask(policed, HARD[4], key="sk-carol")
        assert headers["x-tandem-route"] == "local"
        assert "budget" in headers["x-tandem-reason"] and reply.choices
    dry = route(policed, chat_body(HARD[4]), key="sk-carol")
    assert dry["rule"] == "budget" and dry["model"] == "local"
    with pytest.raises(openai.APIStatusError) as err:  # asking for the cloud by name
        ask(policed, HARD[4], key="sk-carol", model="cloud")
    assert err.value.status_code == 402
