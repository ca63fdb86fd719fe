"""Concurrent local requests queue and all complete; a vanished client stops its work."""

from __future__ import annotations

import asyncio
import time

import httpx


def test_four_simultaneous_local_streams_complete_in_full(aclient, client):
    prompts = [f"Write the numbers from {k} to {k + 30}, separated by spaces." for k in range(4)]
    expected = [
        client.chat.completions.create(model="local", max_tokens=24, temperature=0,
                                       messages=[{"role": "user", "content": p}])
        .choices[0].message.content
        for p in prompts
    ]

    async def one(prompt: str) -> tuple[str, str]:
        stream = await aclient.chat.completions.create(
            model="local", messages=[{"role": "user", "content": prompt}], max_tokens=24,
            temperature=0, stream=True, stream_options={"include_usage": True})
        text, finish, usage = [], None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        assert usage.completion_tokens == 24
        return "".join(text), finish

    async def all_four():
        return await asyncio.gather(*(one(p) for p in prompts))

    results = asyncio.run(all_four())
    assert [r[0] for r in results] == expected
    assert all(r[1] == "length" for r in results)


def test_health_answers_while_local_model_is_busy(gateway):
    async def run():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
            busy = asyncio.create_task(http.post("/v1/chat/completions", json={
                "model": "local", "max_tokens": 120, "temperature": 0,
                "messages": [{"role": "user", "content": "Write a long poem."}]}))
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            health = await http.get("/health")
            elapsed = time.monotonic() - t0
            await busy
            return health.status_code, elapsed

    status, elapsed = asyncio.run(run())
    assert status == 200
    assert elapsed < 0.5  # the event loop is not blocked by generation


def test_disconnected_stream_stops_generation(gateway):
    """A client that leaves mid-stream frees the model: the next request is served quickly."""
    long_req = {"model": "local", "max_tokens": 1500, "temperature": 0, "stream": True,
                "messages": [{"role": "user", "content": "Write a very long essay on rivers."}]}
    with httpx.Client(base_url=gateway.url, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=long_req) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 5:
                    break  # leave after a few events; closing the response disconnects
        t0 = time.monotonic()
        r = http.post("/v1/chat/completions", json={
            "model": "local", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        elapsed = time.monotonic() - t0
    assert r.status_code == 200
    # 1500 tokens at ~50 tok/s would hold the model ~30 s if generation went on.
    assert elapsed < 5
