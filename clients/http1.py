"""One-shot HTTP/1.1 requests to one upstream origin over pooled keep-alive connections.

Why not aiohttp for these: a non-streamed answer is one POST and one whole response,
and aiohttp's general client (a request object, URL and header multidicts, headers and
body in separate writes, so the upstream wakes twice) cost ~0.2 ms of CPU per request
on the gateway's hot path, against ~0.06 ms for this (docs/PERFORMANCE.md). Parsing is
llhttp's, through httptools (the parser uvicorn already uses); this file owns only the
framing, the pool and the timeouts. Streams and readiness probes stay on aiohttp.

What it does not do, on purpose: proxies (the aiohttp session does not either), HTTP/2,
redirects (an API upstream that redirects a POST is misconfigured), request bodies
other than bytes. It asks for an identity body; a gzip or deflate one is still decoded.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

import httptools


BEFORE_SENDING = frozenset({"connect_timeout", "unreachable"})  # safe to retry


class UpstreamIOError(Exception):
    """A request that got no whole response. ``kind``: ``connect_timeout``,
    ``unreachable`` (both before anything was sent: safe to retry), ``read_timeout``,
    ``closed`` (the connection ended first) or ``malformed``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind

    @property
    def before_sending(self) -> bool:
        return self.kind in BEFORE_SENDING


@dataclass(slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its response parsed as it comes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.reusable = False
        self.received = False  # any byte of the current response
        self.last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.headers_done = False

    # -- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamIOError("malformed", "the upstream switched protocols"))
        except httptools.HttpParserError as err:
            self._fail(UpstreamIOError("malformed", f"unparsable response ({err})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        framed = {"content-length", "transfer-encoding"} & self.headers.keys()
        if self.headers_done and not framed:  # a body that ends at the close: it is whole
            self._deliver(self.parser.get_status_code())
        self._fail(UpstreamIOError("closed", "the connection closed before a whole response"))

    # -- httptools callbacks ----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # informational (100 Continue): the real answer follows
            self._reset()
            return
        self.reusable = self.parser.should_keep_alive()
        self._deliver(status)

    # -- one exchange -------------------------------------------------------------------
    def _deliver(self, status: int) -> None:
        waiter, self.waiter = self.waiter, None
        reply = Reply(status, self.headers, b"".join(self.body))
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _fail(self, error: UpstreamIOError) -> None:
        self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def _check_idle(self, read_timeout: float) -> None:
        """No byte for ``read_timeout`` seconds fails the request (aiohttp's sock_read)."""
        idle = self.loop.time() - self.last_data
        if idle >= read_timeout:
            self._fail(UpstreamIOError("read_timeout", f"no data for {read_timeout:g} s"))
        elif self.waiter is not None:
            self._timer = self.loop.call_later(read_timeout - idle, self._check_idle,
                                               read_timeout)

    async def exchange(self, data: bytes, read_timeout: float) -> Reply:
        self.waiter = self.loop.create_future()
        self.received = self.reusable = False
        self.last_data = self.loop.time()
        self.transport.write(data)
        self._timer = self.loop.call_later(read_timeout, self._check_idle, read_timeout)
        try:
            return await self.waiter
        finally:
            self._timer.cancel()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _decoded(reply: Reply) -> Reply:
    coding = reply.headers.get("content-encoding", "identity").strip().lower()
    if coding in ("", "identity"):
        return reply
    try:
        if coding in ("gzip", "x-gzip"):
            reply.body = zlib.decompress(reply.body, 16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            try:
                reply.body = zlib.decompress(reply.body)
            except zlib.error:  # some servers send raw deflate without the zlib header
                reply.body = zlib.decompress(reply.body, -zlib.MAX_WBITS)
        else:
            raise UpstreamIOError("malformed", f"unsupported content-encoding '{coding}'")
    except zlib.error:
        raise UpstreamIOError("malformed", f"a corrupt {coding} body") from None
    return reply


class Http1Pool:
    """POSTs to one origin (scheme, host, port): at most ``limit`` connections, idle ones
    kept for the next request. A kept connection the upstream closed while idle is
    dropped when its close arrives. If the close races a new request (the upstream's
    keep-alive timeout fired as the request arrived) and not a byte came back, the
    request is sent once more on a new connection. aiohttp and urllib3 do that only for
    idempotent methods; here it is the same bet the 5xx retries already make: an LLM
    upstream that closes without a byte has not answered, and sending again is cheaper
    for the caller than a 502."""

    def __init__(self, base_url: str, headers: dict[str, str], limit: int,
                 connect_timeout_s: float, read_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        authority = parts.netloc.rpartition("@")[2]
        fixed = {"host": authority, "user-agent": "tandem", "accept": "application/json",
                 "accept-encoding": "identity", **{k.lower(): v for k, v in headers.items()}}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._heads: dict[str, str] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def _head(self, url: str) -> str:
        head = self._heads.get(url)
        if head is None:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            head = self._heads[url] = f"POST {target} HTTP/1.1\r\n{self._fixed}"
        return head

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self.tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(loop), self.host, self.port, ssl=self._ssl if self.tls
                else None, server_hostname=self.host if self.tls else None),
                self.connect_timeout_s)
        except asyncio.TimeoutError:
            raise UpstreamIOError("connect_timeout",
                                  f"no connection in {self.connect_timeout_s:g} s") from None
        except OSError as err:  # refused, unresolvable, TLS verification failed
            raise UpstreamIOError("unreachable", type(err).__name__) from None
        return conn

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    async def post(self, url: str, payload: bytes) -> Reply:
        """``payload`` POSTed to ``url`` (on this pool's origin); the whole response."""
        if self._closed:
            raise UpstreamIOError("unreachable", "the client is closed")
        data = (self._head(url) + f"content-length: {len(payload)}\r\n\r\n").encode(
            "latin-1") + payload
        async with self._slots:
            conn = self._idle_connection()
            reused = conn is not None
            while True:
                if conn is None:
                    conn = await self._connect()
                try:
                    reply = await conn.exchange(data, self.read_timeout_s)
                except UpstreamIOError as err:
                    if reused and err.kind == "closed" and not conn.received:
                        conn, reused = None, False  # the keep-alive race: send it afresh
                        continue
                    raise
                except BaseException:  # cancelled mid-response: the connection is spent
                    conn.close()
                    raise
                break
            if conn.reusable and not conn.closed and not self._closed:
                self._idle.append(conn)
            else:
                conn.close()
        return _decoded(reply)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
