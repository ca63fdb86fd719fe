"""Any OpenAI-compatible HTTP server as a chat client (vLLM, OpenAI, llama.cpp's server).

Non-streamed requests (chat, completions, embeddings, token scoring) go through
clients/http1.py, a pool of keep-alive HTTP/1.1 connections that sends each request in
one write and reads the whole answer (~0.06 ms of CPU a request against aiohttp's ~0.2,
docs/PERFORMANCE.md). Streams and readiness probes use one pooled
``aiohttp.ClientSession`` per upstream (its C parser costs about half of httpx's round
trip). Connect errors, 429 and 5xx are retried with exponential backoff and jitter, but
only before the first byte of the answer: after that a retry would show the caller text
twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import orjson

from clients.base import (
    GATEWAY_FIELDS,
    Capabilities,
    ChatBody,
    ChatClient,
    Readiness,
    register_backend,
)
from clients.errors import InvalidRequest, UpstreamError
from clients.http1 import BEFORE_SENDING, Http1Pool, Reply, UpstreamIOError
from clients.tool_deltas import without_repeats
from privacy.guard import check_egress

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 8.0
READINESS_TTL_S = 5.0


def _origin(url: str) -> str:
    """scheme://host:port only: never echo credentials or query strings in messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _upstream_message(payload: bytes) -> tuple[str, str | None]:
    """The message and code of an upstream error body, whatever its shape."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:300].decode("utf-8", "replace").strip() or "(empty body)", None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))[:1000], err.get("code")
    if isinstance(err, str):
        return err[:1000], None
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])[:1000], None
    return payload[:300].decode("utf-8", "replace"), None


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# how each kind of transport failure reaches the caller: (what happened, status, code)
_TRANSPORT_ERRORS = {
    "connect_timeout": ("timed out (connect)", 504, "upstream_timeout"),
    "read_timeout": ("timed out (read)", 504, "upstream_timeout"),
    "unreachable": ("is unreachable", 503, "upstream_unavailable"),
    "closed": ("closed the connection early", 502, None),
}


def _failure_kind(err: BaseException) -> str | None:
    """An http1 failure's kind, or the same kind for aiohttp's (streams) exceptions."""
    if isinstance(err, UpstreamIOError):
        return err.kind
    if isinstance(err, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return ("connect_timeout" if isinstance(err, aiohttp.ConnectionTimeoutError)
                else "read_timeout")
    if isinstance(err, aiohttp.ClientConnectorError):
        return "unreachable"
    if isinstance(err, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        return "closed"
    return None


class _NotSent(Exception):
    """An attempt that never reached the upstream (connect failed): always safe to retry."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(str(error))
        self.error = error


@register_backend("openai")
class OpenAIClient(ChatClient):
    capabilities = Capabilities(tools=True, json_schema=True, logprobs=True, local=False,
                                completions=True)

    def __init__(self, name: str, config) -> None:
        super().__init__(name)
        self.config = config
        self.origin = _origin(config.base_url)
        self._http: aiohttp.ClientSession | None = None
        self._pool: Http1Pool | None = None
        self.base_url = base = config.base_url.rstrip("/")
        self._url = base + "/chat/completions"
        self._completions_url = base + "/completions"
        self._embeddings_url = base + "/embeddings"
        self._models_url = base + "/models"
        self._ready_cache: tuple[float, Readiness] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        headers = {"content-type": "application/json"}
        key = cfg.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._http = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s,
                                          sock_read=cfg.read_timeout_s),
            connector=aiohttp.TCPConnector(limit=cfg.max_connections, ttl_dns_cache=300),
            auto_decompress=True,
            raise_for_status=False,
        )
        self._pool = Http1Pool(cfg.base_url, headers, cfg.max_connections,
                               cfg.connect_timeout_s, cfg.read_timeout_s)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise self._not_started()
        return self._http

    @property
    def pool(self) -> Http1Pool:
        if self._pool is None:
            raise self._not_started()
        return self._pool

    def _not_started(self) -> UpstreamError:
        return UpstreamError(f"upstream '{self.name}' is not started", status=503)

    def context_window(self) -> int | None:
        return self.config.n_ctx

    async def readiness(self) -> Readiness:
        now = time.monotonic()
        if self._ready_cache and now - self._ready_cache[0] < READINESS_TTL_S:
            return self._ready_cache[1]
        try:
            async with self.http.get(self._models_url,
                                     timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                state = Readiness(resp.status == 200, f"{self.origin}: HTTP {resp.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            state = Readiness(False, f"{self.origin}: {type(err).__name__}")
        self._ready_cache = (now, state)
        return state

    # -- requests ------------------------------------------------------------------------
    def _payload(self, body: ChatBody) -> bytes:
        if not GATEWAY_FIELDS.isdisjoint(body):  # gateway-internal, never sent upstream
            body = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
        return orjson.dumps({**body, "model": self.config.model})

    def continuation_body(self, body: ChatBody, partial: str) -> ChatBody | None:
        """vLLM's ``continue_final_message``: the partial answer as the last assistant
        message, continued instead of answered anew. Only when the config says so."""
        if not self.config.continuation:
            return None
        return {**body, "messages": [*body["messages"], {"role": "assistant", "content": partial}],
                "continue_final_message": True, "add_generation_prompt": False}

    def _error_for_status(self, status: int, content: bytes, headers) -> UpstreamError:
        message, code = _upstream_message(content)
        where = f"upstream '{self.name}' ({self.origin})"
        if status in (400, 413, 422):
            # The caller's request was refused upstream: their problem, shown as theirs.
            err = InvalidRequest(f"{where} rejected the request: {message}", code=code)
            raise err
        if status == 429:
            ra = _retry_after(headers)
            return UpstreamError(
                f"{where} is rate limiting: {message}", status=429, code="rate_limit_exceeded",
                type="rate_limit_error",
                headers={"retry-after": str(int(ra or 1))},
            )
        if status in (401, 403):
            return UpstreamError(f"{where} refused the gateway's credentials (HTTP {status})")
        if status == 404:
            return UpstreamError(f"{where} answered 404: {message}", upstream_status=404)
        if status == 504 or status == 408:
            return UpstreamError(f"{where} timed out (HTTP {status}): {message}", status=504)
        return UpstreamError(f"{where} failed with HTTP {status}: {message}", status=502,
                             upstream_status=status)

    def _transport_error(self, err: BaseException) -> UpstreamError:
        where = f"upstream '{self.name}' ({self.origin})"
        kind = _failure_kind(err)
        if kind in _TRANSPORT_ERRORS:
            what, status, code = _TRANSPORT_ERRORS[kind]
            return UpstreamError(f"{where} {what}", status=status, code=code)
        if kind == "malformed":
            return UpstreamError(f"{where} sent a malformed response ({err})", status=502)
        return UpstreamError(f"{where}: {type(err).__name__}", status=502)

    def _attempt_failed(self, err: BaseException) -> Exception:
        """What one failed attempt raises: ``_NotSent`` (retried) when nothing reached
        the upstream, else the caller's error."""
        error = self._transport_error(err)
        return _NotSent(error) if _failure_kind(err) in BEFORE_SENDING else error

    async def _backoff(self, attempt: int, retry_after: float | None) -> bool:
        """Sleep before attempt ``attempt + 1``; False when no retry is left or worth it."""
        if attempt >= self.config.max_retries:
            return False
        if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
            return False
        delay = retry_after if retry_after is not None else 0.1 * (2**attempt)
        await asyncio.sleep(delay * (0.5 + random.random()))
        return True

    async def _send(self, body: ChatBody, url: str) -> aiohttp.ClientResponse:
        return await self.post(url, self._payload(body))

    async def post(self, url: str, payload: bytes) -> aiohttp.ClientResponse:
        """``payload`` POSTed to ``url`` until a 2xx response head arrives, for reading as
        it comes (streams)."""
        return await self._until_ok(url, payload, self._open_once)

    async def fetch(self, url: str, payload: bytes) -> Reply:
        """``payload`` POSTed to ``url`` until a whole 2xx response arrives (everything
        that is not a stream)."""
        return await self._until_ok(url, payload, self._fetch_once)

    async def _open_once(self, url: str, payload: bytes):
        try:
            resp = await self.http.post(url, data=payload)
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise self._attempt_failed(err) from None
        if resp.status < 300:
            return resp
        try:
            content = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            content = b""
        finally:
            resp.release()
        return Reply(resp.status, resp.headers, content)

    async def _fetch_once(self, url: str, payload: bytes) -> Reply:
        try:
            return await self.pool.post(url, payload)
        except UpstreamIOError as err:
            raise self._attempt_failed(err) from None

    async def _until_ok(self, url: str, payload: bytes, once):
        """Every outbound request of this backend (chat, embeddings, and token scoring
        through ``/completions``) goes through here, so the egress guard checks the exact
        bytes here, before the first attempt. ``once`` sends one attempt: its success, a
        ``Reply`` for a non-2xx answer, or ``_NotSent`` when nothing reached the upstream;
        those and 429/5xx are retried."""
        check_egress(self.name, url, payload)
        attempt = 0
        while True:
            try:
                result = await once(url, payload)
            except _NotSent as failed:
                if await self._backoff(attempt, None):
                    attempt += 1
                    continue
                raise failed.error from None
            if not isinstance(result, Reply) or result.status < 300:
                return result
            error = self._error_for_status(result.status, result.body, result.headers)
            if result.status in RETRY_STATUSES and await self._backoff(
                attempt, _retry_after(result.headers)
            ):
                attempt += 1
                continue
            raise error

    async def chat(self, body: ChatBody) -> dict:
        return await self._call(body, self._url)

    def chat_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        return without_repeats(self._events(body, self._url))

    async def complete(self, body: ChatBody) -> dict:
        """Legacy completions, passed through to the upstream's ``/completions``."""
        return await self._call(body, self._completions_url)

    def complete_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        return self._events(body, self._completions_url)

    async def embed(self, body: ChatBody) -> dict:
        """Embeddings, passed through to the upstream's ``/embeddings`` (``dimensions`` and
        ``encoding_format`` included) by the same send path, so the guard checks them."""
        try:
            return await self._call(body, self._embeddings_url, expect="data")
        except UpstreamError as err:
            if err.upstream_status in (404, 405, 501):  # a chat-only upstream
                raise InvalidRequest(f"model '{self.name}' cannot embed: its upstream "
                                     f"({self.origin}) does not serve /embeddings "
                                     f"(HTTP {err.upstream_status})", param="model",
                                     code="embeddings_unsupported") from None
            raise

    async def _call(self, body: ChatBody, url: str, expect: str = "choices") -> dict:
        reply = await self.fetch(url, self._payload(body))
        try:
            data = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"upstream '{self.name}' ({self.origin}) sent invalid JSON") from None
        if not isinstance(data, dict) or expect not in data:
            raise UpstreamError(f"upstream '{self.name}' ({self.origin}) sent no {expect}")
        return data

    async def _events(self, body: ChatBody, url: str) -> AsyncIterator[dict]:
        resp = await self._send(body, url)
        started = False
        where = f"upstream '{self.name}' ({self.origin})"
        try:
            async for line in _lines(resp):
                if not line.startswith(b"data:"):
                    continue  # comments, event names, blank separators
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        f"{where} sent a malformed stream event", started=started
                    ) from None
                if not isinstance(chunk, dict):
                    raise UpstreamError(f"{where} sent a malformed stream event", started=started)
                if "error" in chunk:
                    message, code = _upstream_message(data)
                    raise UpstreamError(f"{where} failed mid-stream: {message}", started=started,
                                        code=code)
                started = True
                yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            error = self._transport_error(err)
            error.started = started
            raise error from None
        finally:
            resp.release()
        raise UpstreamError(f"{where} ended the stream without [DONE]", started=started)


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Lines of a streamed body, however long (aiohttp's readline caps line length)."""
    buffer = b""
    async for piece in resp.content.iter_any():
        buffer += piece
        if b"\n" not in piece:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r")
    if buffer:
        yield buffer
