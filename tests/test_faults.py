"""Upstream faults (injected by tests/support/fault_upstream.py): retries, fallback,
clear statuses, in-band stream errors, and no leaked keys."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import FLAKY_KEY

MESSAGES = [{"role": "user", "content": "Say hi."}]


def test_retries_5xx_then_succeeds_and_forwards_key(client, fault):
    fault.script({"kind": "status", "status": 503}, {"kind": "ok", "text": "recovered"})
    raw = client.chat.completions.with_raw_response.create(model="flaky", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "recovered"
    assert raw.headers["x-tandem-route"] == "flaky"
    assert len(fault.requests) == 2
    assert fault.requests[0]["headers"]["authorization"] == f"Bearer {FLAKY_KEY}"
    assert fault.requests[0]["body"]["model"] == "fault"


def test_429_honours_retry_after_then_succeeds(client, fault):
    fault.script({"kind": "status", "status": 429, "retry_after": 0}, {"kind": "ok"})
    resp = client.chat.completions.create(model="flaky", messages=MESSAGES)
    assert resp.choices[0].message.content == "fine"
    assert len(fault.requests) == 2


def test_persistent_5xx_falls_back_to_local(client, fault):
    fault.script(*[{"kind": "status", "status": 500}] * 3)
    raw = client.chat.completions.with_raw_response.create(
        model="flaky", messages=MESSAGES, max_tokens=4)
    assert raw.headers["x-tandem-route"] == "local"
    assert "fallback after 'flaky' failed (502)" in raw.headers["x-tandem-reason"]
    assert raw.parse().choices[0].message.content


def test_stream_falls_back_before_first_byte(client, fault):
    fault.script(*[{"kind": "status", "status": 502}] * 3)
    with client.chat.completions.with_streaming_response.create(
        model="flaky", messages=MESSAGES, max_tokens=4, stream=True
    ) as raw:
        assert raw.headers["x-tandem-route"] == "local"
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text


def test_no_fallback_5xx_is_502_naming_upstream_without_key(gateway, fault):
    fault.script({"kind": "status", "status": 500, "message": "boom"})
    r = httpx.post(gateway.url + "/v1/chat/completions",
                   json={"model": "flaky-solo", "messages": MESSAGES})
    assert r.status_code == 502
    err = r.json()["error"]
    assert "flaky-solo" in err["message"] and "127.0.0.1" in err["message"]
    assert FLAKY_KEY not in r.text


def test_upstream_auth_failure_is_502_not_401(gateway, fault):
    fault.script({"kind": "status", "status": 401, "message": f"bad key {FLAKY_KEY[:6]}"})
    r = httpx.post(gateway.url + "/v1/chat/completions",
                   json={"model": "flaky-solo", "messages": MESSAGES})
    assert r.status_code == 502
    assert "credentials" in r.json()["error"]["message"]
    assert FLAKY_KEY not in r.text


def test_upstream_400_is_the_callers_400(gateway, fault):
    fault.script({"kind": "status", "status": 400, "message": "max_tokens too large"})
    r = httpx.post(gateway.url + "/v1/chat/completions",
                   json={"model": "flaky", "messages": MESSAGES})
    assert r.status_code == 400
    assert "max_tokens too large" in r.json()["error"]["message"]
    assert len(fault.requests) == 1  # not retried, not re-routed


def test_no_fallback_429_keeps_retry_after(gateway, fault):
    fault.script({"kind": "status", "status": 429, "retry_after": 30})
    r = httpx.post(gateway.url + "/v1/chat/completions",
                   json={"model": "flaky-solo", "messages": MESSAGES})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "30"


def test_slow_first_byte_is_504(gateway, fault):
    fault.script({"kind": "slow", "seconds": 3})
    t0 = time.monotonic()
    r = httpx.post(gateway.url + "/v1/chat/completions",
                   json={"model": "flaky-solo", "messages": MESSAGES}, timeout=30)
    assert r.status_code == 504
    assert time.monotonic() - t0 < 3  # read_timeout_s is 1.5
    assert "timed out" in r.json()["error"]["message"]


def test_unreachable_upstream_is_503(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions",
                   json={"model": "down", "messages": MESSAGES})
    assert r.status_code == 503
    assert "unreachable" in r.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["cut", "malformed", "error_event"])
def test_broken_stream_ends_with_error_event(client, fault, kind):
    """No model left to continue: an in-band error ends the stream, nothing replayed."""
    fault.script({"kind": kind})
    stream = client.chat.completions.create(model="flaky-solo", messages=MESSAGES,
                                            stream=True)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "partial "  # what arrived is kept, nothing is replayed
    assert len(fault.requests) == 1


def test_server_healthy_after_faults(client, fault):
    fault.script()
    assert client.chat.completions.create(model="flaky", messages=MESSAGES).choices


@pytest.mark.parametrize("kind", ["cut", "malformed", "error_event"])
def test_stream_broken_mid_way_is_continued_by_the_local_model(client, fault, kind):
    """'flaky' falls back to 'local', which continues the answer from the text already
    sent: the caller gets one uninterrupted answer, nothing repeated, no error."""
    fault.script({"kind": kind})
    stream = client.chat.completions.create(model="flaky", messages=MESSAGES, stream=True,
                                            max_tokens=12, temperature=0)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("partial ") and len(text) > len("partial ")
    assert text.count("partial") == 1
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert len({c.id for c in chunks}) == 1  # one answer, one id
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1
