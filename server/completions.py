"""POST /v1/completions: OpenAI's legacy completions, with vLLM's token-level extensions.

The named model answers and nothing else: no fallback chain, since token ids and
logprobs belong to one model's vocabulary, and a silent switch would hand a caller
another model's numbers. ``tandem`` means ``routing.default``; router names are a 400
(routers judge chat conversations, not raw prompts). Keys, limits and budgets, metrics,
request ids and the body limit apply exactly as for chat: the same middleware, the same
gatekeeper and request record, counted in the chat service's in-flight requests so that a
reload waits for completions too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from clients.errors import InvalidRequest
from server.chat import DONE, SSE_HEADERS, _headers, sse_event, stream_failure
from server.completion_schema import validate_completion_request
from server.schemas import parse_json_body
from server.observe import RequestRecord

log = logging.getLogger("tandem.completions")


async def handle_completion(runtime, request: Request) -> Response:
    """Serve one request on ``runtime`` (the app's current one: policy, clients, service)."""
    service = runtime.service
    state = request.scope.get("state", {})
    record = RequestRecord.begin(state)
    service.inflight += 1
    try:
        response = await _handle(runtime, request, record)
    except BaseException as err:
        record.failed(err)
        service._finish(record)  # the chat service's bookkeeping: metrics, log, usage
        raise
    if not record.stream:
        service._finish(record)
    return response  # a stream finishes its record when it ends


def choose_model(runtime, model: str) -> tuple[str, str]:
    """The configured model that answers ``model``, and why (404 for unknown names)."""
    decision = runtime.policy.decide(model)
    if decision.rule == "router":
        raise InvalidRequest(
            f"'{model}' names a router; routers choose a model for chat conversations. "
            "Name a model (or 'tandem' for the default one) for /v1/completions.",
            param="model", code="completions_unsupported")
    name = decision.model
    if not runtime.clients[name].capabilities.completions:
        raise InvalidRequest(f"model '{name}' cannot serve /v1/completions (use "
                             "/v1/chat/completions)", param="model",
                             code="completions_unsupported")
    return name, decision.reason


async def _handle(runtime, request: Request, record: RequestRecord) -> Response:
    body = parse_json_body(await request.body())
    req = validate_completion_request(body, runtime.config.server.max_logprobs)
    record.model = req.model
    await runtime.service.gate.admit(record.api_key, req.model)
    name, reason = choose_model(runtime, req.model)
    record.route, record.reason, record.rule = name, reason, "explicit"
    client = runtime.clients[name]
    headers = _headers(name, reason)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunks = client.complete_stream(body)
        try:
            first = await anext(chunks, None)
        except BaseException:
            await chunks.aclose()
            raise
        record.stream = True
        events = _sse(first, chunks, name, include_usage, record, runtime.service)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **headers})
    result = await client.complete(body)
    result["model"] = name
    record.usage(result.get("usage"))
    big = req.logprobs is not None or req.prompt_logprobs is not None
    # Logprobs of many positions (or the whole vocabulary) are megabytes: encode off-loop.
    payload = await asyncio.to_thread(orjson.dumps, result) if big else orjson.dumps(result)
    return Response(payload, media_type="application/json", headers=headers)


async def _sse(first: dict | None, chunks: AsyncIterator[dict], name: str,
               include_usage: bool, record: RequestRecord, service) -> AsyncIterator[bytes]:
    """Chunks as server-sent events; the usage chunk only when asked for; an error after
    the first byte is an in-band error event and no ``[DONE]``."""
    try:
        chunk = first
        while chunk is not None:
            if chunk.get("usage"):
                record.usage(chunk["usage"])
            choices = chunk.get("choices")
            if choices or include_usage:
                chunk["model"] = name
                if include_usage:
                    chunk.setdefault("usage", None)
                else:
                    chunk.pop("usage", None)
                if record.first_token is None and any(c.get("text") for c in choices or ()):
                    record.first_token = time.perf_counter()
                yield sse_event(chunk)
            chunk = await anext(chunks, None)
        yield DONE
    except Exception as err:  # noqa: BLE001 - status is sent: report in-band
        yield sse_event(stream_failure(err, name, record))
    finally:
        await chunks.aclose()
        service._finish(record)
