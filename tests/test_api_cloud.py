"""The cloud path against a real third-party server (llama-cpp-python's llama_cpp.server),
models and health endpoints."""

from __future__ import annotations

import asyncio

import httpx


def test_cloud_non_streaming(client):
    raw = client.chat.completions.with_raw_response.create(
        model="cloud", messages=[{"role": "user", "content": "Say OK."}], max_tokens=5,
        temperature=0)
    resp = raw.parse()
    assert raw.headers["x-tandem-route"] == "cloud"
    assert resp.model == "cloud"
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens > 0


def test_cloud_streaming_sync(client):
    with client.chat.completions.with_streaming_response.create(
        model="cloud", messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16, temperature=0, stream=True,
    ) as raw:
        assert raw.headers["x-tandem-route"] == "cloud"
        assert raw.headers["content-type"].startswith("text/event-stream")
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_cloud_and_local_agree_greedy(client):
    """Same weights on both sides (the test cloud serves the 0.5B GGUF): same greedy text."""
    kwargs = dict(messages=[{"role": "user", "content": "Name three primes."}], max_tokens=12,
                  temperature=0)
    local = client.chat.completions.create(model="local", **kwargs)
    cloud = client.chat.completions.create(model="cloud", **kwargs)
    assert local.choices[0].message.content == cloud.choices[0].message.content


def test_async_client_streams_from_both(aclient):
    async def run(model: str) -> str:
        stream = await aclient.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=6,
            temperature=0, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def both():
        return await asyncio.gather(run("local"), run("cloud"))

    local, cloud = asyncio.run(both())
    assert local and cloud


def test_models_list(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[:3] == ["tandem", "local", "cloud"]
    assert "fast" in ids and "flaky" in ids


def test_health_and_ready(gateway):
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    r = httpx.get(gateway.url + "/ready")
    body = r.json()
    # 'down' points at a closed port: not ready, and it says which one.
    assert r.status_code == 503
    assert body["models"]["local"]["ready"] is True
    assert body["models"]["cloud"]["ready"] is True
    assert body["models"]["down"]["ready"] is False
    assert "down" in body["error"]["message"]
