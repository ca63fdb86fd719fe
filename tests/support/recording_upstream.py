"""A real HTTP server on loopback that stores every byte it receives and forwards the
request to a real OpenAI-compatible server (the test cloud), streaming answers back.

The privacy tests point the gateway's remote model here and then search the recorded
bytes (request line, headers, body) for canaries.
"""

from __future__ import annotations

import threading

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.threaded_server import ThreadedServer

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


class RecordingUpstream(ThreadedServer):
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")  # e.g. http://127.0.0.1:1234 (no /v1)
        self.received: list[bytes] = []  # one entry per request: line, headers and body
        self._lock = threading.Lock()
        super().__init__(Starlette(routes=[Route("/{path:path}", self._forward,
                                                 methods=["GET", "POST", "PUT", "DELETE"])]))
        self._http: httpx.AsyncClient | None = None

    def all_bytes(self) -> bytes:
        with self._lock:
            return b"\n".join(self.received)

    def chat_bodies(self) -> list[bytes]:
        with self._lock:
            return [r.split(b"\r\n\r\n", 1)[1] for r in self.received
                    if r.startswith(b"POST ")]

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        head = f"{request.method} {request.url.path}?{request.url.query}\r\n".encode()
        head += b"".join(k.encode() + b": " + v.encode() + b"\r\n"
                         for k, v in request.headers.items())
        with self._lock:
            self.received.append(head + b"\r\n" + body)
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=300)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        upstream = self._http.build_request(request.method, self.target + request.url.path,
                                            content=body, headers=headers)
        resp = await self._http.send(upstream, stream=True)
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}

        async def relay():
            try:
                async for piece in resp.aiter_raw():
                    yield piece
            finally:
                await resp.aclose()

        return StreamingResponse(relay(), status_code=resp.status_code, headers=out_headers)
