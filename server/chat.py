"""POST /v1/chat/completions: validate, decide, walk the fallback chain, answer or stream.

A model in the chain that fails before its first byte hands over to the next one;
``x-tandem-route`` names the model that answered and ``x-tandem-reason`` why (including
the failures that were skipped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import AsyncIterator

import orjson
from opentelemetry import trace
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from clients.base import ChatClient
from clients.errors import InvalidRequest, TandemError, UpstreamError
from privacy.stage import PrivacyStage, privacy_header
from routers.policy import POLICY_NAME, Decision, Policy
from routers.rules import RouteContext
from server.auth import Gatekeeper
from server.observe import GatewayMetrics, RequestRecord
from server.schemas import parse_json_body, validate_chat_request
from server import tracing
from server.tracing import annotate, child, event

log = logging.getLogger("tandem.chat")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
DONE = b"data: [DONE]\n\n"


def sse_event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def stream_failure(err: Exception, source: str, record: RequestRecord) -> dict:
    """The in-band error for a stream whose status line is already sent: an OpenAI
    error object for Tandem's errors, a generic one (no stack trace) otherwise."""
    record.status = "stream_error"
    if isinstance(err, TandemError):
        log.warning("stream from %s failed: %s", source, err.message)
        return err.body()
    log.error("stream from %s failed", source, exc_info=err)
    return {"error": {"message": f"stream failed ({type(err).__name__})",
                      "type": "server_error", "param": None, "code": None}}


async def encode_sse(chunks: AsyncIterator[dict | None]) -> AsyncIterator[bytes]:
    """Chat chunks as SSE: ``None`` (the end) is ``[DONE]``."""
    try:
        async for chunk in chunks:
            yield DONE if chunk is None else sse_event(chunk)
    finally:
        await chunks.aclose()


def _headers(route: str, reason: str, client: ChatClient | None = None) -> dict[str, str]:
    # Header values must be latin-1; reasons may quote model names, keep them ASCII.
    return {"x-tandem-route": route,
            "x-tandem-reason": reason.encode("ascii", "replace").decode()[:500],
            "x-tandem-privacy": privacy_header(client)}


class ChatService:
    """Owns the policy and the clients; one instance per app."""

    def __init__(self, policy: Policy, clients: dict[str, ChatClient],
                 metrics: GatewayMetrics | None = None, gate: Gatekeeper | None = None,
                 prices: dict[str, tuple[float, float]] | None = None,
                 privacy: PrivacyStage | None = None) -> None:
        self.policy = policy
        self.clients = clients
        self.privacy = privacy
        self.metrics = metrics
        self.gate = gate or Gatekeeper(None)
        self.prices = prices or {}
        self._bookings: set[asyncio.Task] = set()
        self.inflight = 0  # requests not yet finished (a reload waits for 0 to close clients)

    def _finish(self, record: RequestRecord) -> None:
        """Metrics and log now; the key's usage is booked in the background (a stream's
        end may be a cancellation, where nothing more may be awaited)."""
        if record.done:
            return
        self.inflight -= 1
        record.finish(self.metrics)
        if record.span is not None:
            annotate(record.span, route=record.route, status=str(record.status),
                     rule=record.rule, prompt_tokens=record.prompt_tokens,
                     completion_tokens=record.completion_tokens, private=record.private,
                     stream=record.stream)
            if record.status not in (200, "200"):
                record.span.set_status(trace.Status(trace.StatusCode.ERROR, str(record.status)))
            record.span.end()
        if record.api_key is not None and record.status == 200:
            task = asyncio.get_running_loop().create_task(self.gate.account(
                record.api_key, record.prompt_tokens + record.completion_tokens,
                record.cost_usd(self.prices)))
            self._bookings.add(task)
            task.add_done_callback(self._bookings.discard)

    async def handle(self, request: Request) -> Response:
        return (await self.handle_body(await request.body(), request.scope.get("state", {})))[0]

    async def handle_body(self, body: bytes | dict, state: dict
                          ) -> tuple[Response, RequestRecord]:
        """A chat request (raw JSON or parsed) from a caller whose request state is
        ``state``; other APIs bridged through chat (/v1/responses) call this too."""
        record = RequestRecord.begin(state)
        record.span = tracing.start("tandem.chat")
        annotate(record.span, request_id=record.request_id,
                 key=getattr(record.api_key, "name", None))
        self.inflight += 1
        try:
            response = await self._handle(body, record)
        except TandemError as err:
            record.status = err.status
            self._finish(record)
            raise
        if not record.stream:
            # Metrics and the access log once the answer is out: the response is
            # written in this same step of the task, before the loop runs callbacks.
            asyncio.get_running_loop().call_soon(self._finish, record)
        return response, record  # a stream finishes its record when it ends

    async def _handle(self, body: bytes | dict, record: RequestRecord) -> Response:
        if isinstance(body, bytes):
            body = parse_json_body(body)
        validated = validate_chat_request(body)
        record.model = validated.model
        annotate(record.span, model=validated.model)
        prepared, ctx = await self.context(body, validated.model, record)
        started = time.perf_counter()
        with tracing.scope(child(record.span, "tandem.route")) as span:
            decision = await self.policy.route(validated.model, body, ctx)
            annotate(span, model=decision.model, rule=decision.rule, p_strong=decision.score,
                     threshold=decision.threshold, explored=decision.explored)
        if self.metrics is not None:
            self.metrics.router_decision.observe(time.perf_counter() - started)
            if decision.threshold is not None and validated.model == POLICY_NAME:
                self.metrics.router_threshold.set(decision.threshold)
            if decision.explored:
                self.metrics.router_explorations.labels(decision.model).inc()
        record.rule, record.reason, record.score = decision.rule, decision.reason, decision.score
        self._check_capabilities(decision, body)
        clients = self.clients
        record.private = ctx.private
        if prepared is not None and prepared.plan.private:
            chain, clients = self.privacy.chain(prepared, decision.chain)
            decision = replace(decision, chain=chain,
                               reason=f"{decision.reason}; privacy {prepared.mode} "
                                      f"({len(prepared.plan.spans)} private spans)")
        if validated.stream:
            include_usage = bool(validated.stream_options and validated.stream_options.include_usage)
            return await self._stream(decision, body, include_usage, record, clients)
        return await self._complete(decision, body, record, clients)

    async def context(self, body: dict, model: str, record: RequestRecord,
                      dry_run: bool = False):
        """Admission (key, budget, limits; a dry run only reads the budget), the privacy
        stage, and what routing may look at: (prepared privacy plan or None, context)."""
        key = record.api_key
        downgrade_at = None
        if key is not None and model == POLICY_NAME:
            downgrade_at = (key.budget_downgrade_at if key.budget_downgrade_at is not None
                            else self.policy.downgrade_at)
        if dry_run:
            share = await self.gate.budget_share(key)
        else:
            share = await self.gate.admit(key, model, downgrade=downgrade_at is not None)
        prepared = None
        if self.privacy is not None:  # before routing: the mode may rule out remote models
            with tracing.scope(child(record.span, "tandem.privacy")) as span:
                prepared = await self.privacy.prepare(body, key, record.request_id,
                                                      remember=not dry_run)
                if prepared is not None:
                    annotate(span, mode=prepared.mode, private_spans=len(prepared.plan.spans))
        ctx = RouteContext(body, key_name=getattr(key, "name", None),
                           key_cloud_fraction=getattr(key, "cloud_fraction", None),
                           private=bool(prepared is not None and prepared.plan.private),
                           budget_share=share, downgrade_at=downgrade_at)
        return prepared, ctx

    async def _remember(self, decision: Decision, record: RequestRecord, answered: str,
                        body: dict) -> None:
        """A routed response becomes teachable: feedback on its request id is a label."""
        live = self.policy.live
        if live is None or not live.learning or not decision.routed:
            return
        role = {self.policy.strong: "strong", self.policy.weak: "weak"}.get(answered)
        if role is None:
            return
        features = decision.features
        if features is None:  # decided by a rule: embed as a decision would (inline, bounded)
            features = live.embed(body.get("messages") or [])
        try:  # awaited: feedback on this response's id may arrive as soon as it is read
            await live.remember(record.request_id, getattr(record.api_key, "name", None),
                                answered, role, decision.score, decision.explored, features)
        except Exception:  # noqa: BLE001 - learning must never fail a served request
            log.warning("router: could not store request %s for feedback", record.request_id,
                        exc_info=True)

    def _judge_later(self, decision: Decision, record: RequestRecord, body: dict,
                     answer: str | None) -> None:
        """With routing.learning.judge, a sampled share of routed answers is graded by the
        judge model in the background (never one that carried private spans)."""
        live = self.policy.live
        judge = live.learning_cfg.judge if live is not None and live.learning else None
        if (judge is None or not decision.routed or record.private or not answer
                or judge.model not in self.clients or not live.sample_judge()):
            return
        task = asyncio.get_running_loop().create_task(live.judge(
            self.clients[judge.model], record.request_id,
            getattr(record.api_key, "name", None), body.get("messages") or [], answer))
        self._bookings.add(task)
        task.add_done_callback(self._bookings.discard)

    def _fell_back(self, chain: tuple[str, ...], i: int, err: UpstreamError, stage: str,
                   record: RequestRecord) -> str:
        log.warning("model %s failed (%s): %s", chain[i], stage, err.message)
        event(record.span, "tandem.fallback", failed=chain[i], next=chain[i + 1], stage=stage,
              status=err.status)
        if self.metrics is not None:
            self.metrics.fallbacks.labels(chain[i], chain[i + 1], stage).inc()
        return f"fallback after '{chain[i]}' failed ({err.status})"

    def _check_capabilities(self, decision: Decision, body: dict) -> None:
        first = self.clients[decision.model]
        if body.get("tools") and not first.capabilities.tools:
            raise InvalidRequest(f"model '{first.name}' does not support tools", param="tools")

    async def _complete(self, decision: Decision, body: dict, record: RequestRecord,
                        clients: dict[str, ChatClient]) -> Response:
        reason = decision.reason
        for i, name in enumerate(decision.chain):
            try:
                with tracing.scope(child(record.span, "tandem.upstream", model=name,
                                         attempt=i)):
                    result = await clients[name].chat(body)
            except UpstreamError as err:
                if err.retryable and i + 1 < len(decision.chain):
                    reason += "; " + self._fell_back(decision.chain, i, err,
                                                     "before_first_byte", record)
                    continue
                raise
            result["model"] = name
            record.route, record.reason = name, reason
            record.usage(result.get("usage"))
            await self._remember(decision, record, name, body)
            choices = result.get("choices") or [{}]
            self._judge_later(decision, record, body,
                              (choices[0].get("message") or {}).get("content"))
            return Response(orjson.dumps(result), media_type="application/json",
                            headers=_headers(name, reason, clients[name]))
        raise AssertionError("empty chain")  # Decision always has one model

    async def _open(self, chain: tuple[str, ...], start: int, body: dict,
                    clients: dict[str, ChatClient], record: RequestRecord,
                    partial: str | None = None
                    ) -> tuple[int, AsyncIterator[dict], dict | None, list[str]]:
        """Open a stream on the first model from ``chain[start:]`` that delivers a first
        chunk. With ``partial``, only models that can continue an answer are tried."""
        skipped: list[str] = []
        for i in range(start, len(chain)):
            client = clients[chain[i]]
            request = body if partial is None else client.continuation_body(body, partial)
            if request is None:
                continue
            chunks = client.chat_stream(request)
            try:
                with tracing.scope(child(record.span, "tandem.upstream", model=chain[i],
                                         attempt=i, stream=True, resumed=partial is not None)):
                    first = await chunks.__anext__()  # the span ends at the first chunk
                return i, chunks, first, skipped
            except StopAsyncIteration:
                return i, chunks, None, skipped
            except UpstreamError as err:
                await chunks.aclose()
                if err.retryable and not err.started and i + 1 < len(chain):
                    skipped.append(self._fell_back(chain, i, err, "before_first_byte", record))
                    continue
                raise
            except BaseException:
                await chunks.aclose()
                raise
        raise UpstreamError("no model in the chain can continue the answer", status=502)

    async def _stream(self, decision: Decision, body: dict, include_usage: bool,
                      record: RequestRecord, clients: dict[str, ChatClient]) -> Response:
        i, chunks, first, skipped = await self._open(decision.chain, 0, body, clients, record)
        reason = "; ".join([decision.reason, *skipped])
        name = decision.chain[i]
        record.stream, record.route, record.reason = True, name, reason
        await self._remember(decision, record, name, body)
        events = self._sse(decision, i, first, chunks, body, include_usage, record, clients)
        response = StreamingResponse(encode_sse(events), media_type="text/event-stream",
                                     headers={**SSE_HEADERS,
                                              **_headers(name, reason, clients[name])})
        response.chunks = events  # what APIs bridged through chat read instead of the bytes
        return response

    async def _sse(self, decision: Decision, link: int, first: dict | None,
                   chunks: AsyncIterator[dict], body: dict, include_usage: bool,
                   record: RequestRecord, clients: dict[str, ChatClient]
                   ) -> AsyncIterator[dict | None]:
        """The chunks to forward, then ``None`` (the end). If the model fails mid-stream
        and a later model in the chain can continue an answer, it continues from the text
        already sent (the caller sees one answer, nothing repeated); otherwise an error
        object (``{"error": ...}``, sent in-band) ends the stream, without ``None``."""
        name = decision.chain[link]
        sent: list[str] = []  # content of choice 0 so far
        stream_id = None
        resumed = False
        single = (body.get("n") or 1) == 1
        try:
            chunk = first
            while True:
                try:
                    while chunk is not None:
                        choices = chunk.get("choices")
                        if chunk.get("usage"):
                            record.usage(chunk["usage"])
                        if not choices and not include_usage:
                            chunk = await anext(chunks, None)
                            continue
                        delta = choices[0].get("delta", {}) if choices else {}
                        if resumed and choices and delta.get("role") and not delta.get("content"):
                            chunk = await anext(chunks, None)  # the continuation's own opener
                            continue
                        stream_id = stream_id or chunk.get("id")
                        chunk["id"] = stream_id
                        chunk["model"] = name
                        if choices and delta.get("content"):
                            sent.append(delta["content"])
                            if record.first_token is None:
                                record.first_token = time.perf_counter()
                        if include_usage:
                            chunk.setdefault("usage", None)
                        elif "usage" in chunk:
                            chunk.pop("usage")
                        yield chunk
                        chunk = await anext(chunks, None)
                    yield None
                    return
                except UpstreamError as err:
                    if not (single and err.started and link + 1 < len(decision.chain)):
                        raise
                    self._fell_back(decision.chain, link, err, "mid_stream", record)
                    await chunks.aclose()
                    link, chunks, chunk, _ = await self._open(
                        decision.chain, link + 1, body, clients, record, partial="".join(sent))
                    name = decision.chain[link]
                    record.route = name
                    resumed = True
        except Exception as err:  # noqa: BLE001 - status is sent: report in-band, no [DONE]
            yield stream_failure(err, name, record)
        finally:
            await chunks.aclose()
            if not record.completion_tokens:
                record.completion_tokens = len(sent)  # no usage from upstream: chunk count
            if record.status == 200:
                self._judge_later(decision, record, body, "".join(sent))
            self._finish(record)
