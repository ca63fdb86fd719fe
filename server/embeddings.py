"""POST /v1/embeddings: OpenAI's embeddings, from a local GGUF model or passed through.

The named model answers and nothing else: no fallback chain, since vectors from two
models live in different spaces and a silent switch would corrupt the caller's index.
``tandem`` means ``routing.default`` (as for /v1/completions); router names are a 400.
A local model embeds in-process (clients/llama_cpp/embeddings.py); an ``openai`` model
gets the request passed through to its ``/embeddings``. Composite models cannot embed.

Private text never leaves for a remote model: its inputs go through the privacy stage
(marks, detectors, sticky memory) like a chat body, and the egress guard refuses a
payload holding a private span with a 403 that says to name a local model instead. It is
not embedded locally behind the caller's back (the vectors would be another model's).

Keys, limits, request ids, the body limit, the request metrics and the access log apply
as for chat (the same gatekeeper and request record); ``tandem_embedding_requests``
counts these requests by route and status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from typing import Annotated, Any, Awaitable, Literal, Union

import numpy as np
import orjson
from pydantic import Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import Response

from clients.errors import InvalidRequest, UpstreamError
from privacy.guard import EgressBlocked
from server.chat import _headers
from server.observe import RequestRecord
from server.schemas import _Open, parse_json_body, shaped_error

TokenId = Annotated[int, Field(ge=0)]
MAX_INPUTS = 2048  # per request, as OpenAI
BIG_RESPONSE = 65_536  # floats: encode a larger response off the event loop
_INPUT_SHAPES = ("input: must be a non-empty string, a list of strings, a list of token "
                 "ids (integers >= 0), or a list of token-id lists")


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: Union[str, list[str], list[TokenId], list[list[TokenId]]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @model_validator(mode="after")
    def _inputs(self) -> "EmbeddingRequest":
        p = self.input
        if p == "" or p == [] or (isinstance(p, list) and any(x in ("", []) for x in p)):
            raise ValueError("input: empty inputs are not allowed (not '' nor [])")
        if isinstance(p, list) and not isinstance(p[0], int) and len(p) > MAX_INPUTS:
            raise ValueError(f"input: {len(p)} inputs are over {MAX_INPUTS} per request")
        return self

    def texts(self) -> list[str]:
        """The inputs that are text (token ids carry none a detector could read)."""
        p = self.input
        return [p] if isinstance(p, str) else [x for x in p if isinstance(x, str)]


def validate_embedding_request(body: Any) -> EmbeddingRequest:
    """Validate a parsed JSON body; raise ``InvalidRequest`` naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return EmbeddingRequest.model_validate(body)
    except ValidationError as err:
        raise shaped_error(err, EmbeddingRequest.model_fields, "input", _INPUT_SHAPES) from None


def choose_model(runtime, model: str) -> tuple[str, str]:
    """The configured model that answers ``model``, and why (404 for unknown names)."""
    decision = runtime.policy.decide(model)
    if decision.rule == "router":
        raise InvalidRequest(
            f"'{model}' names a router; routers choose a model per chat conversation, and "
            "vectors from two models cannot be compared. Name a model (or 'tandem' for the "
            "default one) for /v1/embeddings.", param="model", code="embeddings_unsupported")
    return decision.model, decision.reason


async def handle_embeddings(runtime, request: Request) -> Response:
    """Serve one request on ``runtime`` (the app's current one: policy, clients, service)."""
    service = runtime.service
    state = request.scope.get("state", {})
    record = RequestRecord.begin(state)
    service.inflight += 1  # a reload waits for embeddings too
    try:
        return await _handle(runtime, request, record)
    except BaseException as err:
        record.failed(err)
        raise
    finally:
        service._finish(record)  # the chat service's bookkeeping: metrics, log, usage
        if service.metrics is not None:
            service.metrics.embeddings.labels(record.route or "none",
                                              str(record.status)).inc()


async def _handle(runtime, request: Request, record: RequestRecord) -> Response:
    body = parse_json_body(await request.body())
    req = validate_embedding_request(body)
    record.model = req.model
    await runtime.service.gate.admit(record.api_key, req.model)
    name, reason = choose_model(runtime, req.model)
    record.route, record.reason, record.rule = name, reason, "explicit"
    client = runtime.clients[name]
    if not client.capabilities.local and runtime.privacy is not None:
        # Arms the egress guard for this request: the send path checks the exact bytes.
        prepared = await runtime.privacy.prepare(_privacy_view(body, req), record.api_key,
                                                 record.request_id, remember=False)
        record.private = prepared.plan.private
    try:
        result = await _unless_gone(request, client.embed(body))
    except EgressBlocked as err:
        raise EgressBlocked(f"{err.message}. Embeddings of private text are only made on "
                            "this machine: name a local model.", retryable=False) from None
    if result is None:
        record.status = "cancelled"
        return Response(status_code=499)  # nobody reads it
    data = conform(result, req.encoding_format or "float", name)
    result["model"] = name
    record.usage(result.get("usage"))
    floats = sum(len(item["embedding"]) for item in data[:1]) * len(data)
    if floats > BIG_RESPONSE:
        payload = await asyncio.to_thread(orjson.dumps, result,
                                          option=orjson.OPT_SERIALIZE_NUMPY)
    else:
        payload = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(payload, media_type="application/json",
                    headers=_headers(name, reason, client))


async def _unless_gone(request: Request, work: Awaitable[dict]) -> dict | None:
    """``work``'s result, or None when the caller hangs up first: the work is cancelled
    (a local embedder stops at its next decode instead of finishing a job nobody reads)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if not task.cancelled() and task.done():
        return task.result()
    with contextlib.suppress(BaseException):
        await task
    return None


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _privacy_view(body: dict, req: EmbeddingRequest) -> dict:
    """The request as the privacy stage reads a chat body: each text input a user message,
    with the caller's marks and the fields sticky privacy scopes by."""
    view = {k: body[k] for k in ("private_context", "conversation_id", "user", "metadata")
            if k in body}
    view["messages"] = [{"role": "user", "content": text} for text in req.texts()]
    return view


def conform(result: dict, encoding_format: str, source: str) -> list[dict]:
    """Every vector of ``result`` in the format the caller asked for (whatever the
    backend returned: an array, a list of floats, or base64 of little-endian float32)."""
    data = result.get("data") if isinstance(result, dict) else None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise UpstreamError(f"model '{source}' sent no embeddings")
    for item in data:
        item["embedding"] = _encode(item.get("embedding"), encoding_format, source)
    return data


def _encode(vector: Any, encoding_format: str, source: str):
    if isinstance(vector, str):
        if encoding_format == "base64":
            return vector
        try:
            return np.frombuffer(base64.b64decode(vector, validate=True), dtype="<f4")
        except (binascii.Error, ValueError):
            raise UpstreamError(f"model '{source}' sent a malformed base64 embedding") from None
    try:
        array = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or array.size == 0:
        raise UpstreamError(f"model '{source}' sent a malformed embedding (expected a list "
                            "of numbers)")
    if encoding_format == "base64":
        return base64.b64encode(array.astype("<f4").tobytes()).decode("ascii")
    return vector
