"""The app factory: ``create_app(config)`` builds a FastAPI app; nothing happens at import.

Models load in the background at start-up: ``/health`` answers at once, ``/ready``
says 503 until every model is loaded and every upstream answers.
"""

from __future__ import annotations

import asyncio
import gc
import time
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from clients.base import ChatClient, build_client
from routers.policy import Policy
from server.auth import AuthMiddleware, Gatekeeper
from server.chat import ChatService
from server.config import GatewayConfig
from server.errors import install_error_handlers
from server.middleware import RequestContextMiddleware
from server.observe import GatewayMetrics
from server.openapi import install_openapi
from server.state import RedisState, SQLiteState


def _json(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def create_app(config: GatewayConfig) -> FastAPI:
    policy = Policy.from_config(config)
    clients: dict[str, ChatClient] = {
        name: build_client(name, model_cfg) for name, model_cfg in config.models.items()
    }
    prices = {name: (m.price_input_per_mtok, m.price_output_per_mtok)
              for name, m in config.models.items() if m.backend == "openai"}
    metrics = GatewayMetrics(clients, prices) if config.server.metrics else None
    keys = {k.key_sha256: k for k in config.auth.keys}
    store = None
    if keys:
        store = (RedisState(config.state.redis_url) if config.state.redis_url
                 else SQLiteState(config.state.sqlite_path))
    service = ChatService(policy, clients, metrics, Gatekeeper(store), prices)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await asyncio.gather(*(c.start() for c in clients.values()))
        # Start-up objects live for the whole process: keep them out of every GC pass,
        # which otherwise shows up as millisecond stalls in p99 latency.
        gc.freeze()
        try:
            yield
        finally:
            await asyncio.gather(*(c.close() for c in clients.values()),
                                 return_exceptions=True)
            if store is not None:
                await store.close()

    app = FastAPI(title="Tandem", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.config = config
    app.state.clients = clients
    install_error_handlers(app)

    # A plain Starlette route: the handler validates the body itself (one pydantic pass),
    # so FastAPI's per-request dependency solving would be pure overhead on the hot path.
    app.add_route("/v1/chat/completions", service.handle, methods=["POST"])

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = []
        for name in policy.names():
            target = config.models.get(name)
            owner = "tandem" if target is None else (
                "local" if clients[name].capabilities.local else "upstream")
            data.append({"id": name, "object": "model", "created": created, "owned_by": owner})
        return _json({"object": "list", "data": data})

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> Response:
        policy.decide(model_id)  # 404 model_not_found for unknown names
        return _json({"id": model_id, "object": "model", "created": created,
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
        states = await asyncio.gather(*(c.readiness() for c in clients.values()))
        models = {name: {"ready": s.ready, "detail": s.detail}
                  for name, s in zip(clients, states)}
        if all(s.ready for s in states):
            return _json({"status": "ready", "models": models})
        waiting = ", ".join(n for n, s in models.items() if not s["ready"])
        return _json({"status": "not_ready", "models": models,
                      "error": {"message": f"not ready: {waiting}", "type": "unavailable_error",
                                "param": None, "code": "not_ready"}}, status=503)

    install_openapi(app, policy.names())
    app.add_middleware(AuthMiddleware, keys=keys, open_paths=config.auth.open_paths)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=config.server.max_body_bytes)
    return app
