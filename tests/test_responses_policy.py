"""/v1/responses on the `tandem` route: routing and feedback apply as for chat, stored
responses are visible to their own key only, and a conversation that carried private
context is never written to the shared state store."""

from __future__ import annotations

import sqlite3

import httpx
import openai
import pytest

from tests.support.learning import post, sdk, start_learning_gateway
from tests.support.prompts import EASY, HARD


@pytest.fixture(scope="module")
def routed(local_model_path, cloud_server, workdir):
    gw = start_learning_gateway("responses", local_model_path, cloud_server.url + "/v1",
                                workdir)
    yield gw
    gw.stop()


def test_tandem_routes_responses_and_takes_feedback(routed):
    alice = sdk(routed)
    hard = alice.responses.with_raw_response.create(model="tandem", input=HARD[0],
                                                    max_output_tokens=2)
    easy = alice.responses.with_raw_response.create(model="tandem", input=EASY[0],
                                                    max_output_tokens=2)
    assert hard.headers["x-tandem-route"] == "cloud"
    assert easy.headers["x-tandem-route"] == "local"
    assert "router classifier" in hard.headers["x-tandem-reason"]
    assert hard.parse().model == "cloud" and easy.parse().model == "local"
    r = post(routed, "/v1/tandem/feedback", {"request_id": hard.headers["x-request-id"],
                                             "score": 1.0})
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "strong"


def test_stored_responses_belong_to_their_key(routed):
    alice, bob = sdk(routed), sdk(routed, "sk-bob")
    mine = alice.responses.create(model="local", input="Say hi.", max_output_tokens=3)
    assert alice.responses.retrieve(mine.id).id == mine.id
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="local", input="Go on.", previous_response_id=mine.id,
                             max_output_tokens=3)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(mine.id)
    unauthenticated = httpx.get(f"{routed.url}/v1/responses/{mine.id}", timeout=30)
    assert unauthenticated.status_code == 401


def _in_state_store(routed, needle: str) -> bool:
    db = sqlite3.connect(routed.log.parent / "learning.sqlite")
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f"SELECT * FROM {table}"):  # noqa: S608 - test's own db
                if any(needle.encode() in (v if isinstance(v, bytes) else str(v).encode())
                       for v in row):
                    return True
        return False
    finally:
        db.close()


def test_private_conversations_stay_in_this_process(routed):
    alice = sdk(routed)
    secret = "Account holder Zorblat Quixtrand, IBAN DE89370400440532013000"
    private = alice.responses.create(
        model="tandem", input="Summarise my account in five words.", max_output_tokens=8,
        extra_body={"private_context": secret})
    public = alice.responses.create(model="local", input="Name a colour: Vermilionquartz",
                                    max_output_tokens=3)
    # both are stored: the private one in this process only, the public one shared
    assert alice.responses.retrieve(private.id).id == private.id
    assert _in_state_store(routed, "Vermilionquartz")
    assert not _in_state_store(routed, "Zorblat")
    assert not _in_state_store(routed, private.id)
    # continued, the private context comes along (on the local model, kept local again)
    follow = alice.responses.with_raw_response.create(
        model="tandem", input="And in three words?", previous_response_id=private.id,
        max_output_tokens=6)
    assert follow.headers["x-tandem-route"] == "local"
    assert "privacy" in follow.headers["x-tandem-reason"]
    assert not _in_state_store(routed, follow.parse().id)
    assert alice.responses.retrieve(follow.parse().id).previous_response_id == private.id
