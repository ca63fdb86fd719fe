"""Pure ASGI middleware: request ids on every response, and the request-body limit (413).

Pure ASGI (not BaseHTTPMiddleware) so that streaming responses are not buffered and
the hot path pays one dict lookup, not a task hop.
"""

from __future__ import annotations

import re
import uuid

import orjson

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                   "param": None, "code": "request_too_large"
                                   if status == 413 else None}})


class RequestContextMiddleware:
    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if _SAFE_ID.match(candidate) else None
            elif name == b"content-length":
                length = int(value) if value.isdigit() else None
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        rid_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        if length is not None and length > self.max_body_bytes:
            await self._reject(send_with_id, length)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            # Read the body once, counting, so a chunked upload cannot dodge the limit.
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body = message.get("body", b"")
                size += len(body)
                if size > self.max_body_bytes:
                    await self._reject(send_with_id, size)
                    return
                chunks.append(body)
                if not message.get("more_body"):
                    break
            whole = b"".join(chunks)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": whole, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_with_id)
            return
        await self.app(scope, receive, send_with_id)

    async def _reject(self, send, size: int) -> None:
        body = _error_body(413, f"Request body of {size} bytes is over the limit of "
                                f"{self.max_body_bytes} bytes (server.max_body_bytes)")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
