"""API keys, per-key limits and budgets.

Keys live in the config only as SHA-256 hashes. Without configured keys the gateway is
open (a local tool); with them every path but ``auth.open_paths`` needs
``Authorization: Bearer <key>``. Limits: requests and tokens per fixed minute window;
the budget is the estimated cloud spend (config prices) over the key's lifetime.

Statuses: 401 ``invalid_api_key``; 403 ``model_not_allowed``; 429 ``rate_limit_exceeded``
with ``Retry-After`` (the window's remaining seconds); 402 ``budget_exceeded`` for a spent
budget — not 429, which the OpenAI SDK retries automatically although a spent budget
never recovers by waiting, and not 403, which says "never allowed".
"""

from __future__ import annotations

import hashlib
import hmac
import math

import orjson

from clients.errors import TandemError
from server.state import StateStore

WINDOW_S = 60


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_admin_key(token: str | None, admin_sha256: str) -> bool:
    """Whether ``token`` is the admin key (compared in constant time, by its hash)."""
    return bool(token) and hmac.compare_digest(hash_key(token), admin_sha256)


class AuthError(TandemError):
    status = 401
    type = "invalid_request_error"


class AuthMiddleware:
    """Pure ASGI: resolves the bearer key to its config entry in ``scope['state']``."""

    def __init__(self, app, holder) -> None:
        self.app = app
        self.holder = holder  # keys and open paths come from the current runtime (reloadable)

    async def __call__(self, scope, receive, send) -> None:
        runtime = self.holder.current
        keys = runtime.keys  # sha256 hex -> ApiKeyConfig
        if (scope["type"] != "http" or not keys
                or scope["path"] in runtime.config.auth.open_paths
                or scope["path"].startswith("/admin/")):  # admin routes check their own key
            await self.app(scope, receive, send)
            return
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, rest = value.decode("latin-1").partition(" ")
                token = rest.strip() if scheme.lower() == "bearer" else None
                break
        entry = keys.get(hash_key(token)) if token else None
        if entry is None:
            body = orjson.dumps({"error": {
                "message": "Missing API key: send 'Authorization: Bearer <key>'." if not token
                else "Incorrect API key provided.",
                "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["api_key"] = entry
        await self.app(scope, receive, send)


class Gatekeeper:
    """Admits a request for a key and model, and books what it used afterwards."""

    def __init__(self, store: StateStore | None) -> None:
        self.store = store

    async def admit(self, key, model: str, downgrade: bool = False) -> float | None:
        """Checks the key's model list, budget and limits; returns the share of its
        budget spent (None without a budget). With ``downgrade`` (a budget-aware
        `tandem` request), a spent budget is not refused: the policy answers locally."""
        if key is None or self.store is None:
            return None
        if key.models and model not in key.models:
            raise TandemError(f"API key '{key.name}' may not use model '{model}' "
                              f"(allowed: {', '.join(key.models)})", status=403,
                              type="permission_error", code="model_not_allowed", param="model")
        share = None
        if key.budget_usd is not None:
            spent = await self.store.add_total(f"spend:{key.name}", 0.0)
            share = spent / key.budget_usd if key.budget_usd else 1.0
            if spent >= key.budget_usd and not downgrade:
                raise TandemError(
                    f"API key '{key.name}' has spent its budget (${spent:.4f} of "
                    f"${key.budget_usd:.4f})", status=402, type="insufficient_quota",
                    code="budget_exceeded")
        if key.rpm is not None:
            used, left = await self.store.add_window(f"rpm:{key.name}", 1, WINDOW_S)
            if used > key.rpm:
                raise self._limited(key, f"{key.rpm} requests per minute", left)
        if key.tpm is not None:
            used, left = await self.store.add_window(f"tpm:{key.name}", 0, WINDOW_S)
            if used >= key.tpm:
                raise self._limited(key, f"{key.tpm} tokens per minute", left)
        return share

    async def budget_share(self, key) -> float | None:
        """The share of the key's budget spent, without admitting anything (dry runs)."""
        if key is None or self.store is None or key.budget_usd is None:
            return None
        spent = await self.store.add_total(f"spend:{key.name}", 0.0)
        return spent / key.budget_usd if key.budget_usd else 1.0

    async def account(self, key, tokens: int, cost_usd: float) -> None:
        if key is None or self.store is None:
            return
        if key.tpm is not None and tokens:
            await self.store.add_window(f"tpm:{key.name}", tokens, WINDOW_S)
        if key.budget_usd is not None and cost_usd:
            await self.store.add_total(f"spend:{key.name}", cost_usd)

    @staticmethod
    def _limited(key, what: str, left: float) -> TandemError:
        return TandemError(f"API key '{key.name}' is over its limit of {what}; retry in "
                           f"{math.ceil(left)} s", status=429, type="rate_limit_error",
                           code="rate_limit_exceeded",
                           headers={"retry-after": str(max(1, math.ceil(left)))})
