"""The app factory: ``create_app(config)`` builds a FastAPI app; nothing happens at import.

Models load in the background at start-up: ``/health`` answers at once, ``/ready``
says 503 until every model is loaded and every upstream answers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from clients.errors import InvalidRequest, TandemError
from server.auth import AuthMiddleware, is_admin_key
from server import tandem_api, tracing
from server.completions import handle_completion
from server.config import ConfigError, GatewayConfig
from server.embeddings import handle_embeddings
from server.dashboard import DashboardMiddleware
from server.errors import install_error_handlers
from server.fast_lane import FastLaneApp, Lane
from server.middleware import RequestContextMiddleware
from server.observe import GatewayMetrics
from server.openapi import install_openapi
from server.responses import ResponsesService
from server.runtime import Runtime, RuntimeHolder
from server.state import RedisState, SQLiteState


log = logging.getLogger("tandem.app")


def _json(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def create_app(config: GatewayConfig, config_path: str | None = None) -> FastLaneApp:
    """``config_path`` is what a reload re-reads (None: the embedded default)."""
    store = None
    if config.auth.keys or config.routing.learning.enabled:
        store = (RedisState(config.state.redis_url) if config.state.redis_url
                 else SQLiteState(config.state.sqlite_path))
    tracer_provider = tracing.install(config.server.tracing)  # once: a reload keeps it
    first = Runtime(config, None, store)
    metrics = GatewayMetrics(first.clients, first.prices) if config.server.metrics else None
    first.service.metrics = metrics
    if first.policy.live is not None:
        first.policy.live.metrics = metrics
    holder = RuntimeHolder(first, config_path, metrics, store)

    def on_sighup() -> None:
        task = asyncio.get_running_loop().create_task(_reload_logged(holder))
        holder._retiring.add(task)
        task.add_done_callback(holder._retiring.discard)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await first.start()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / Unix
            pass
        # Start-up objects live for the whole process: keep them out of every GC pass,
        # which otherwise shows up as millisecond stalls in p99 latency.
        gc.freeze()
        try:
            yield
        finally:
            await holder.current.close()
            if store is not None:
                await store.close()
            tracing.shutdown(tracer_provider)

    app = FastLaneApp(title="Tandem", version="0.1.0", lifespan=lifespan,
                      docs_url="/docs", redoc_url=None, **tracing.fastapi_telemetry())
    app.state.runtime = holder
    install_error_handlers(app)

    # A plain Starlette route: the handler validates the body itself (one pydantic pass),
    # so FastAPI's per-request dependency solving would be pure overhead on the hot path.
    async def chat_completions(request: Request) -> Response:
        return await holder.current.service.handle(request)

    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])

    async def completions(request: Request) -> Response:
        return await handle_completion(holder.current, request)

    app.add_route("/v1/completions", completions, methods=["POST"])

    responses = ResponsesService(holder, store)
    app.add_route("/v1/responses", responses.create, methods=["POST"])
    app.add_route("/v1/responses/{response_id}", responses.retrieve, methods=["GET"])
    app.add_route("/v1/responses/{response_id}", responses.delete, methods=["DELETE"])

    for path, handler, methods in (("/v1/embeddings", handle_embeddings, ["POST"]),
                                   ("/v1/tandem/feedback", tandem_api.feedback, ["POST"]),
                                   ("/v1/tandem/router", tandem_api.router_status, ["GET"]),
                                   ("/v1/tandem/route", tandem_api.route_dry_run, ["POST"]),
                                   ("/v1/tandem/privacy/forget", tandem_api.privacy_forget,
                                    ["POST"])):
        async def endpoint(request: Request, handler=handler) -> Response:
            return await handler(holder.current, request)

        app.add_route(path, endpoint, methods=methods)

    @app.get("/v1/tandem/egress/{request_id}")
    async def egress_audit(request_id: str, request: Request) -> Response:
        """Exactly what left for each upstream during one request (bounded retention)."""
        key = request.scope.get("state", {}).get("api_key")
        records = holder.current.privacy.audit.get(request_id, getattr(key, "name", None))
        if records is None:
            raise TandemError(f"No egress record for request '{request_id}' (unknown, "
                              "expired, or another key's)", status=404,
                              type="invalid_request_error", code="not_found")
        return _json({"object": "tandem.egress", "request_id": request_id,
                      "data": [r.to_json() for r in records]})

    @app.get("/v1/models")
    async def list_models() -> Response:
        rt = holder.current
        data = []
        for name in rt.policy.names():
            client = rt.clients.get(name)
            owner = "tandem" if client is None else (
                "local" if client.capabilities.local else "upstream")
            data.append({"id": name, "object": "model", "created": rt.created,
                         "owned_by": owner})
        return _json({"object": "list", "data": data})

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> Response:
        rt = holder.current
        rt.policy.decide(model_id)  # 404 model_not_found for unknown names
        return _json({"id": model_id, "object": "model", "created": rt.created,
                      "owned_by": "tandem"})

    if metrics is not None:
        @app.get("/metrics", include_in_schema=False)
        async def prometheus() -> Response:
            return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        clients = holder.current.clients
        states = await asyncio.gather(*(c.readiness() for c in clients.values()))
        models = {name: {"ready": s.ready, "detail": s.detail}
                  for name, s in zip(clients, states)}
        if all(s.ready for s in states):
            return _json({"status": "ready", "models": models})
        waiting = ", ".join(n for n, s in models.items() if not s["ready"])
        return _json({"status": "not_ready", "models": models,
                      "error": {"message": f"not ready: {waiting}", "type": "unavailable_error",
                                "param": None, "code": "not_ready"}}, status=503)

    @app.post("/admin/reload", include_in_schema=False)
    async def admin_reload(request: Request) -> Response:
        admin = holder.current.config.auth.admin_key_sha256
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        if admin is None:
            raise TandemError("Reload over HTTP is off: set auth.admin_key_sha256 (or send "
                              "SIGHUP)", status=403, type="permission_error",
                              code="admin_disabled")
        if not is_admin_key(token, admin):
            raise TandemError("Incorrect admin key.", status=401,
                              type="invalid_request_error", code="invalid_api_key")
        try:
            rt = await holder.reload()
        except ConfigError as err:
            raise InvalidRequest(f"New configuration rejected, the old one keeps serving: "
                                 f"{err}", code="invalid_config") from None
        return _json({"status": "reloaded", "models": list(rt.clients),
                      "reused": sorted(rt.reused)})

    install_openapi(app, first.policy.names())
    app.add_middleware(AuthMiddleware, holder=holder)
    # GET /ui and /v1/tandem/stats, outside AuthMiddleware: they check the admin key
    app.add_middleware(DashboardMiddleware, holder=holder, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=config.server.max_body_bytes)

    def lane(handler) -> RequestContextMiddleware:
        """A hot path with the middleware above it that it needs (the dashboard's only
        answers its own paths)."""
        return RequestContextMiddleware(AuthMiddleware(Lane(handler), holder=holder),
                                        max_body_bytes=config.server.max_body_bytes)

    app.lanes = {"/v1/chat/completions": lane(chat_completions),
                 "/v1/completions": lane(completions), "/v1/responses": lane(responses.create)}
    return app


async def _reload_logged(holder: RuntimeHolder) -> None:
    try:
        await holder.reload()
    except ConfigError as err:
        log.error("SIGHUP reload rejected, the old configuration keeps serving: %s", err)
