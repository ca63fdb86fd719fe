"""POST /v1/responses (and GET/DELETE of a stored one), bridged through chat.

The request becomes a chat body (server/responses_schema.py) that the chat service
answers on its usual path: routing, privacy, fallbacks, metrics and the egress guard
apply unchanged, on every route. The chat answer becomes a response object or typed
SSE events (server/responses_output.py). ``store`` (default true, as OpenAI) keeps
the response and its conversation for ``responses.ttl_s``, visible to the same API key
only, so that ``previous_response_id`` can continue it.
"""

from __future__ import annotations

import collections
import time
from typing import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from clients.errors import TandemError
from server.chat import SSE_HEADERS
from server.responses_output import ResponseBuilder, assistant_message, new_id
from server.responses_schema import chat_body, input_messages, validate_responses_request
from server.schemas import parse_json_body
from server.state import StateStore

_DELETED = b"null"


def _not_found(response_id: str, param: str | None = None) -> TandemError:
    return TandemError(f"No response with id '{response_id}' (unknown, expired, deleted, "
                       "or another key's)", status=404, type="invalid_request_error",
                       code="not_found", param=param)


class ResponseStore:
    """Stored responses. Those whose request carried private spans, and all of them when
    no state store is configured, stay in this process (bounded, oldest dropped first);
    the rest go to the state store, where replicas share them. Private text is never
    put in a shared store."""

    def __init__(self, shared: StateStore | None, max_in_memory: int) -> None:
        self.store = shared
        self.local: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()
        self.max_in_memory = max_in_memory

    async def save(self, response_id: str, record: dict, ttl_s: float, private: bool) -> None:
        raw = orjson.dumps(record)
        if self.store is not None and not private:
            await self.store.put(f"responses:{response_id}", raw, ttl_s)
            return
        if self.max_in_memory <= 0:
            return
        self.local[response_id] = (time.time() + ttl_s, raw)
        self.local.move_to_end(response_id)
        while len(self.local) > self.max_in_memory:
            self.local.popitem(last=False)

    async def load(self, response_id: str, key: str | None) -> dict | None:
        raw = None
        held = self.local.get(response_id)
        if held is not None:
            if held[0] > time.time():
                raw = held[1]
            else:
                del self.local[response_id]
        if raw is None and self.store is not None:
            raw = await self.store.get(f"responses:{response_id}")
        record = orjson.loads(raw) if raw and raw != _DELETED else None
        return record if record is not None and record.get("key") == key else None

    async def delete(self, response_id: str, key: str | None, ttl_s: float) -> bool:
        if await self.load(response_id, key) is None:
            return False
        self.local.pop(response_id, None)
        if self.store is not None:
            await self.store.put(f"responses:{response_id}", _DELETED, ttl_s)
        return True


def _key_name(request: Request) -> str | None:
    return getattr(request.scope.get("state", {}).get("api_key"), "name", None)


class ResponsesService:
    """The /v1/responses endpoints of one app (the runtime is read per request, so a
    reload's new models and settings apply)."""

    def __init__(self, holder, store: StateStore | None) -> None:
        self.holder = holder
        self.store = ResponseStore(store, holder.current.config.responses.max_in_memory)

    @property
    def ttl_s(self) -> float:
        return self.holder.current.config.responses.ttl_s

    async def create(self, request: Request) -> Response:
        body = parse_json_body(await request.body())
        req = validate_responses_request(body)
        key = _key_name(request)
        history: list[dict] = []
        if req.previous_response_id:
            previous = await self.store.load(req.previous_response_id, key)
            if previous is None:
                raise _not_found(req.previous_response_id, "previous_response_id")
            history = previous["messages"]
            if "private_context" in previous and "private_context" not in body:
                body = {**body, "private_context": previous["private_context"]}
        conversation = history + input_messages(req.input)
        chat = chat_body(req, body, conversation)
        store = req.store is not False
        builder = ResponseBuilder(req, chat, new_id("resp"), store,
                                  logprobs=bool(chat.get("logprobs")))
        answered, record = await self.holder.current.service.handle_body(
            chat, request.scope.get("state", {}))
        headers = {k: v for k, v in answered.headers.items() if k.startswith("x-tandem-")}
        keep = {"key": key, "messages": conversation}
        if "private_context" in body:  # continued with it, in this process only
            keep["private_context"] = body["private_context"]
        private = record.private or "private_context" in keep
        if not isinstance(answered, StreamingResponse):
            response = builder.finished(orjson.loads(answered.body))
            await self._keep(store, builder, keep, private)
            return Response(orjson.dumps(response), media_type="application/json",
                            headers=headers)
        events = self._events(answered.chunks, builder, store, keep, private)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **headers})

    async def _keep(self, store: bool, builder: ResponseBuilder, keep: dict,
                    private: bool) -> None:
        """Store the finished response with its conversation (``keep``: the key, the
        messages so far, any private context) and this answer as its last turn."""
        response = builder.response
        if not store or response["status"] == "failed":
            return
        record = {**keep, "response": response,
                  "messages": keep["messages"] + [assistant_message(response["output"])]}
        await self.store.save(response["id"], record, self.ttl_s, private)

    async def _events(self, chunks: AsyncIterator[dict | None], builder: ResponseBuilder,
                      store: bool, keep: dict, private: bool) -> AsyncIterator[bytes]:
        """The chat service's chunks as Responses events: ``None`` (the end) closes the
        items and sends the terminal event; an in-band error (the model failed after the
        stream began) ends it with ``response.failed``. Events made from one chunk go
        out in one write, and no ``[DONE]`` (the Responses stream has none)."""
        try:
            yield b"".join(builder.opening())
            async for chunk in chunks:
                if chunk is None:
                    yield b"".join(builder.ending())
                    await self._keep(store, builder, keep, private)
                    return
                if "error" in chunk:
                    yield builder.failure(chunk["error"])
                    return
                events = builder.chunk(chunk)
                if events:
                    yield events[0] if len(events) == 1 else b"".join(events)
            yield builder.failure({"code": "server_error", "message": "the stream ended early"})
        finally:
            await chunks.aclose()

    async def retrieve(self, request: Request) -> Response:
        response_id = request.path_params["response_id"]
        record = await self.store.load(response_id, _key_name(request))
        if record is None:
            raise _not_found(response_id)
        return Response(orjson.dumps(record["response"]), media_type="application/json")

    async def delete(self, request: Request) -> Response:
        response_id = request.path_params["response_id"]
        if not await self.store.delete(response_id, _key_name(request), self.ttl_s):
            raise _not_found(response_id)
        return Response(orjson.dumps({"id": response_id, "object": "response",
                                      "deleted": True}), media_type="application/json")
