"""A fast OpenAI-compatible upstream for overhead benches: canned answers, no model.

A raw ASGI app (no framework) so that its own cost stays far below what is measured.
    uvicorn bench.fake_upstream:app --port 9000
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CHUNKS = 20
_COMPLETION = json.dumps({
    "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello from the fake upstream."}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
}).encode()
_MODELS = b'{"object":"list","data":[{"id":"fake","object":"model"}]}'


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode() + b"\n\n"


_STREAM = ([_chunk({"role": "assistant", "content": ""})]
           + [_chunk({"content": f"tok{i} "}) for i in range(CHUNKS)]
           + [_chunk({}, "stop"), b"data: [DONE]\n\n"])
_JSON = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    if scope["method"] == "POST":
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
    if scope["path"].endswith("/models"):
        await send({"type": "http.response.start", "status": 200, "headers": _JSON})
        await send({"type": "http.response.body", "body": _MODELS})
        return
    if b'"stream":true' in body.replace(b" ", b""):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for piece in _STREAM:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _JSON})
    await send({"type": "http.response.body", "body": _COMPLETION})


def start_fake(tmp: Path):
    """This app in its own uvicorn process on a free loopback port (a ServerProcess)."""
    from tests.support.servers import ServerProcess, free_port

    port = free_port()
    return ServerProcess(
        [sys.executable, "-m", "uvicorn", "bench.fake_upstream:app", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        port, "/v1/models", tmp / "fake.log")
