"""A programmable OpenAI-compatible upstream, only for faults a real server cannot make
on demand: 5xx, 429, a slow first byte, a cut stream, malformed events.

Tests queue behaviours with ``script(...)``; each chat request takes the next one
(``ok`` when the queue is empty) and is recorded with its headers and body.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.threaded_server import ThreadedServer


def _completion(text: str) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": "fault", "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
           "model": "fault", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class FaultUpstream(ThreadedServer):
    def __init__(self) -> None:
        self.behaviours: deque[dict] = deque()
        self.requests: list[dict] = []
        self.mix: list[tuple[float, dict]] = []  # (probability, behaviour) when unscripted
        self._rng = random.Random(0)
        super().__init__(Starlette(routes=[
            Route("/v1/models", self._models),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._legacy, methods=["POST"]),
        ]))

    def set_mix(self, mix: list[tuple[float, dict]], seed: int = 0) -> None:
        """Unscripted requests draw a behaviour at these rates (the rest are ``ok``)."""
        self.mix = mix
        self._rng = random.Random(seed)

    def _next(self) -> dict:
        if self.behaviours:
            return self.behaviours.popleft()
        roll = self._rng.random()
        for p, behaviour in self.mix:
            if roll < p:
                return behaviour
            roll -= p
        return {"kind": "ok"}

    def script(self, *behaviours: dict) -> None:
        self.behaviours.clear()
        self.behaviours.extend(behaviours)
        self.requests.clear()

    async def _models(self, _: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fault", "object": "model"}]})

    async def _legacy(self, request: Request) -> Response:
        """Legacy completions: always a healthy answer (JSON or a two-event stream)."""
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        obj = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
               "model": "fault", "choices": [{"index": 0, "text": "fine", "logprobs": None,
                                              "finish_reason": "length"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
        if not body.get("stream"):
            return JSONResponse(obj)

        async def events():
            yield b"data: " + json.dumps({**obj, "usage": None}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        b = self._next()
        kind = b["kind"]
        if kind == "status":
            headers = {"retry-after": str(b["retry_after"])} if "retry_after" in b else None
            return JSONResponse({"error": {"message": b.get("message", "injected failure"),
                                           "type": "server_error"}},
                                status_code=b["status"], headers=headers)
        if kind == "slow":
            await asyncio.sleep(b["seconds"])
        stream = body.get("stream")
        if kind in ("ok", "slow") and not stream:
            return JSONResponse(_completion(b.get("text", "fine")))

        async def events():
            yield _chunk({"role": "assistant", "content": ""})
            yield _chunk({"content": "partial "})
            if kind == "cut":
                raise ConnectionResetError("injected: connection cut mid-stream")
            if kind == "malformed":
                yield b"data: {not json\n\n"
                return
            if kind == "error_event":
                yield b'data: {"error": {"message": "injected mid-stream error"}}\n\n'
                return
            yield _chunk({"content": b.get("text", "answer")})
            yield _chunk({}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
