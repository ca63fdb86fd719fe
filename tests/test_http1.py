"""clients/http1.py against real sockets on loopback: a raw asyncio server that answers
each request as a test scripts it (keep-alive, closes, chunked and close-delimited
bodies, gzip, truncation, silence, garbage), and a TLS upstream with its own CA."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
from pathlib import Path

import orjson
import pytest

from clients.http1 import Http1Pool, UpstreamIOError

OK_BODY = b'{"ok": true}'


def ok(body: bytes = OK_BODY, extra: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            f"{len(body)}\r\n{extra}\r\n").encode() + body


class ScriptedServer:
    """Each request it reads is answered by the next script entry: raw bytes to write,
    ``close`` after writing them, or ``silence`` (nothing, until the client closes).
    Counts connections and requests."""

    def __init__(self, *replies) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies.pop(0) if self.replies else ok()
                if callable(reply):
                    reply = await reply()
                if reply == "silence":  # until the client gives up and closes
                    await reader.read()
                    return
                data, close = (reply, False) if isinstance(reply, bytes) else reply
                writer.write(data)
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.open_now -= 1
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def pool(base: str, limit: int = 8, read_timeout_s: float = 5.0) -> Http1Pool:
    return Http1Pool(base, {"authorization": "Bearer sk-up"}, limit, 2.0, read_timeout_s)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_requests_share_one_keep_alive_connection_and_send_one_write():
    async def go():
        server = ScriptedServer()
        async with server as base:
            p = pool(base)
            replies = [await p.post(base + "/chat/completions", b'{"n": %d}' % i)
                       for i in range(5)]
            await p.close()
        return server, replies
    server, replies = run(go())
    assert [r.status for r in replies] == [200] * 5
    assert all(orjson.loads(r.body) == {"ok": True} for r in replies)
    assert server.connections == 1 and len(server.requests) == 5
    first = server.requests[0].decode()
    assert first.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "authorization: Bearer sk-up\r\n" in first and "host: 127.0.0.1:" in first
    assert first.endswith('\r\n\r\n{"n": 0}')


def test_an_idle_connection_the_upstream_closed_is_not_reused():
    async def go():
        server = ScriptedServer((ok(), True), ok())  # answers, then closes the connection
        async with server as base:
            p = pool(base)
            first = await p.post(base + "/x", b"{}")
            await asyncio.sleep(0.1)  # the close arrives while the connection is idle
            second = await p.post(base + "/x", b"{}")
            await p.close()
        return server, first, second
    server, first, second = run(go())
    assert (first.status, second.status) == (200, 200)
    assert server.connections == 2 and len(server.requests) == 2


def test_a_close_racing_a_new_request_resends_it_once_on_a_new_connection():
    async def go():
        server = ScriptedServer(ok(), (b"", True), ok(b'{"again": 1}'))
        async with server as base:
            p = pool(base)
            await p.post(base + "/x", b"{}")
            # the upstream reads the next request and closes without a byte back (its
            # keep-alive timeout fired as the request arrived): nothing was answered
            again = await p.post(base + "/x", b"{}")
            await p.close()
        return server, again
    server, again = run(go())
    assert orjson.loads(again.body) == {"again": 1}
    assert server.connections == 2


def test_connection_close_chunked_and_close_delimited_bodies():
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")
    until_close = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"b\": 2}"

    async def go():
        server = ScriptedServer(ok(extra="connection: close\r\n"), chunked,
                                (until_close, True), ok())
        async with server as base:
            p = pool(base)
            out = [await p.post(base + "/x", b"{}") for _ in range(4)]
            await p.close()
        return server, out
    server, out = run(go())
    assert [orjson.loads(r.body) for r in out] == [{"ok": True}, {"a": 1}, {"b": 2},
                                                   {"ok": True}]
    # a new connection after "connection: close" and after the close-delimited body
    assert server.connections == 3


def test_gzip_and_deflate_bodies_are_decoded():
    import zlib
    zipped = gzip.compress(OK_BODY)
    deflated = zlib.compress(OK_BODY)

    async def go():
        server = ScriptedServer(ok(zipped, "content-encoding: gzip\r\n"),
                                ok(deflated, "content-encoding: deflate\r\n"),
                                ok(b"garbage", "content-encoding: gzip\r\n"),
                                ok(b"x", "content-encoding: br\r\n"))
        async with server as base:
            p = pool(base)
            good = [await p.post(base + "/x", b"{}") for _ in range(2)]
            bad = []
            for _ in range(2):
                with pytest.raises(UpstreamIOError) as err:
                    await p.post(base + "/x", b"{}")
                bad.append(str(err.value))
            await p.close()
        return good, bad
    good, bad = run(go())
    assert [r.body for r in good] == [OK_BODY, OK_BODY]
    assert "corrupt gzip" in bad[0] and "unsupported content-encoding 'br'" in bad[1]


def test_truncated_silent_and_garbled_answers_fail_with_their_kind():
    truncated = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial"

    async def go():
        server = ScriptedServer((truncated, True), "silence", b"NOT HTTP AT ALL\r\n\r\n")
        async with server as base:
            p = pool(base, read_timeout_s=0.5)
            kinds = []
            for _ in range(3):
                with pytest.raises(UpstreamIOError) as err:
                    await p.post(base + "/x", b"{}")
                kinds.append(err.value.kind)
            after = await p.post(base + "/x", b"{}")  # the pool still works
            await p.close()
        return kinds, after
    kinds, after = run(go())
    assert kinds == ["closed", "read_timeout", "malformed"]
    assert after.status == 200


def test_a_slow_answer_that_keeps_sending_is_not_a_read_timeout():
    async def go():
        async def handler(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            body = b'{"slow": true}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
            for i in range(len(body)):  # 14 pieces, 0.1 s apart: 1.4 s in all
                writer.write(body[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.1)
            writer.close()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        p = pool(base, read_timeout_s=0.5)
        reply = await p.post(base + "/x", b"{}")
        await p.close()
        server.close()
        return reply
    assert orjson.loads(run(go()).body) == {"slow": True}


def test_connections_are_capped_and_a_cancelled_request_spends_its_connection():
    async def go():
        async def slow():
            await asyncio.sleep(0.2)
            return ok()
        server = ScriptedServer(*[slow] * 6, "silence", slow, slow)
        async with server as base:
            p = pool(base, limit=2)
            replies = await asyncio.gather(*[p.post(base + "/x", b"{}") for _ in range(6)])
            task = asyncio.ensure_future(p.post(base + "/x", b"{}"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.1)
            open_after_cancel = server.open_now
            after = await asyncio.gather(*[p.post(base + "/x", b"{}") for _ in range(2)])
            await p.close()
        return server, replies, after, open_after_cancel
    server, replies, after, open_after_cancel = run(go())
    assert [r.status for r in replies] == [200] * 6
    assert server.most_open == 2
    assert open_after_cancel == 1  # the cancelled request's connection was closed
    # two at once after the cancel: the kept connection and a new one, never the spent one
    assert [r.status for r in after] == [200, 200] and server.connections == 3


def test_unreachable_and_connect_timeout_are_before_sending():
    async def go():
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        p = pool(f"http://127.0.0.1:{port}")
        with pytest.raises(UpstreamIOError) as err:
            await p.post(f"http://127.0.0.1:{port}/x", b"{}")
        return err.value
    err = run(go())
    assert err.kind == "unreachable" and err.before_sending


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_https_upstream_is_verified_against_the_trust_store(tmp_path, monkeypatch):
    cert, key = _self_signed(tmp_path)

    async def go(trusted: bool):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        server = ScriptedServer()
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=ctx)
        base = f"https://localhost:{srv.sockets[0].getsockname()[1]}/v1"
        if trusted:
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        else:
            monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        p = pool(base)
        try:
            return await p.post(base + "/chat/completions", b"{}")
        except UpstreamIOError as err:
            return err
        finally:
            await p.close()
            srv.close()
    untrusted = run(go(False))
    assert isinstance(untrusted, UpstreamIOError) and untrusted.kind == "unreachable"
    trusted = run(go(True))
    assert trusted.status == 200 and trusted.body == OK_BODY
