"""The hot paths, past FastAPI's own layers: POST /v1/chat/completions, /v1/completions
and /v1/responses go from uvicorn to their handlers through Tandem's own middleware
(request id and body limit, then the API key) and nothing else.

FastAPI's stack around a route is about ten ASGI layers (server-error and exception
middleware, its telemetry and body-limit layers, the exit stack, the router's linear
match, the request/response wrappers), each a coroutine frame and most a wrapped
``send``: on a 2-core machine at 200 requests/s that was ~0.2 ms of the ~0.5 ms the
gateway itself spends per request (docs/PERFORMANCE.md). The handlers are the same
functions the FastAPI routes call, so behaviour is the same: every other method, path
and the lifespan still go through FastAPI, and errors leave as the same OpenAI error
objects (server/errors.py).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Awaitable, Callable, Mapping

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from server.errors import response_for_exception

Handler = Callable[[Request], Awaitable[Response]]


class Lane:
    """One hot path as a plain ASGI app: the handler, and its errors as responses."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope, receive, send) -> None:
        try:
            response = await self.handler(Request(scope, receive))
        except Exception as err:  # noqa: BLE001 - rendered as FastAPI's handlers would
            response = response_for_exception(err)
        await response(scope, receive, send)


class FastLaneApp(FastAPI):
    """FastAPI, except for the POSTs of ``lanes`` (path -> ASGI app, set after the app is
    built, each wrapped in the middleware it needs)."""

    lanes: Mapping[str, object] = MappingProxyType({})  # none until create_app sets them

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            lane = self.lanes.get(scope["path"])
            if lane is not None:
                await lane(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
