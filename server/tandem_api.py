"""Tandem's own endpoints for routing: feedback that teaches the router, the router's
state, and a dry run of a routing decision. OpenAI-style errors, like the rest."""

from __future__ import annotations

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from clients.errors import InvalidRequest, TandemError
from routers.online import FeedbackNotFound
from routers.policy import describe
from server.observe import RequestRecord
from server.schemas import first_error, parse_json_body, validate_chat_request


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(min_length=1, max_length=256)
    score: float = Field(ge=0, le=1, description="quality of the answer, 0 (useless) to 1")
    comment: str | None = Field(None, max_length=4096)


def _json(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


async def _body(request: Request) -> object:
    return parse_json_body(await request.body())


def _key(request: Request):
    return request.scope.get("state", {}).get("api_key")


def _metric(runtime, outcome: str) -> None:
    metrics = runtime.service.metrics
    if metrics is not None:
        metrics.router_feedback.labels(outcome).inc()


async def feedback(runtime, request: Request) -> Response:
    """POST /v1/tandem/feedback {"request_id", "score"}: a label for the router."""
    body = await _body(request)
    if not isinstance(body, dict):
        _metric(runtime, "invalid")
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        fb = FeedbackRequest.model_validate(body)
    except ValidationError as err:
        param, msg, _ = first_error(err)
        _metric(runtime, "invalid")
        raise InvalidRequest(f"Invalid feedback: '{param}': {msg}", param=param) from None
    live = runtime.policy.live
    if live is None or not live.learning:
        _metric(runtime, "disabled")
        raise InvalidRequest("Feedback is off: set routing.learning.enabled: true (with a "
                             "learned routing.router)", code="learning_disabled")
    key = _key(request)
    try:
        out = await live.feedback(fb.request_id, getattr(key, "name", None), fb.score)
    except FeedbackNotFound:
        _metric(runtime, "not_found")
        raise TandemError(f"No routed response with request id '{fb.request_id}' (unknown, "
                          "expired, not routed by `tandem`, or another key's)", status=404,
                          type="invalid_request_error", code="not_found",
                          param="request_id") from None
    _metric(runtime, "accepted")
    return _json({"object": "tandem.feedback", "request_id": fb.request_id,
                  "score": fb.score, "accepted": True, **out})


async def privacy_forget(runtime, request: Request) -> Response:
    """POST /v1/tandem/privacy/forget [{"conversation_id"}]: drop what sticky privacy
    remembers for the calling key (all of it, or one conversation's)."""
    body = await _body(request) if await request.body() else {}
    if not isinstance(body, dict) or set(body) - {"conversation_id"}:
        raise InvalidRequest("The body may hold only 'conversation_id' (a string).")
    cid = body.get("conversation_id")
    if cid is not None and (not isinstance(cid, str) or not cid):
        raise InvalidRequest("'conversation_id' must be a non-empty string",
                             param="conversation_id")
    memory = runtime.privacy.memory
    if memory is None:
        raise InvalidRequest("Sticky privacy is off (privacy.memory.enabled: false)",
                             code="memory_disabled")
    owner = memory.owner(_key(request))
    await memory.forget(owner, cid)
    return _json({"object": "tandem.privacy.forget", "forgotten": True,
                  "scope": "conversation" if cid else "key"})


async def router_status(runtime, request: Request) -> Response:
    """GET /v1/tandem/router: labels, checkpoint version, held-out APGR, threshold,
    actual against target cloud fraction."""
    live = runtime.policy.live
    if live is None:
        policy = runtime.policy
        return _json({"object": "tandem.router", "kind": policy.policy_router[0]
                      if policy.policy_router else None, "default": policy.default,
                      "rules": [r.name for r in policy.rules],
                      "learning": {"enabled": False}})
    status = await live.status()
    status["rules"] = [r.name for r in runtime.policy.rules]
    return _json(status)


async def route_dry_run(runtime, request: Request) -> Response:
    """POST /v1/tandem/route: a chat body in, the decision out; nothing is generated,
    nothing is counted against limits or the router's traffic."""
    body = await _body(request)
    validated = validate_chat_request(body)
    service = runtime.service
    record = RequestRecord(request.scope.get("state", {}).get("request_id", ""),
                           model=validated.model, stream=False, api_key=_key(request))
    prepared, ctx = await service.context(body, validated.model, record, dry_run=True)
    decision = await runtime.policy.route(validated.model, body, ctx, dry_run=True)
    out = describe(decision)
    out["privacy"] = prepared.mode if prepared is not None and prepared.plan.private else None
    if out["privacy"] is not None:
        out["chain"] = list(service.privacy.chain(prepared, decision.chain)[0])
        out["model"] = out["chain"][0]
    return _json({"object": "tandem.route", **out})
