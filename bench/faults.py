"""Clients keep sending while the cloud misbehaves at set rates; what do they see?

The cloud (tests/support/fault_upstream.py) answers 500, 429, hangs past the read
timeout, cuts streams mid-way and sends malformed events at the rates below; a second,
healthy upstream is the fallback. Every client-visible failure is classified: clean (an
OpenAI error object with a proper status, or an in-band error event that ends the
stream) or unclean (anything else: a reset, a non-JSON body, a 500, a hang).

    .venv/bin/python bench/faults.py [--clients 16] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from common import emit_json, machine, print_table  # noqa: I001

import httpx
import orjson

from bench.fake_upstream import start_fake
from tests.support.fault_upstream import FaultUpstream
from clients.model_store import resolve
from tests.support.servers import start_gateway

MIX = [(0.10, {"kind": "status", "status": 500}),
       (0.05, {"kind": "status", "status": 429, "retry_after": 0}),
       (0.03, {"kind": "slow", "seconds": 3}),
       (0.05, {"kind": "cut"}),
       (0.03, {"kind": "malformed"})]


def _clean_error(status: int, body: bytes) -> bool:
    try:
        err = orjson.loads(body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    return status in (400, 404, 413, 429, 502, 503, 504) and {"message", "type"} <= set(err)


async def one(http: httpx.AsyncClient, url: str, model: str, stream: bool) -> str:
    """'ok', 'clean' (a proper OpenAI error) or 'unclean'."""
    body = {"model": model, "stream": stream, "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]}
    try:
        if not stream:
            r = await http.post(url, json=body)
            if r.status_code == 200:
                return "ok" if r.json().get("choices") else "unclean"
            return "clean" if _clean_error(r.status_code, r.content) else "unclean"
        async with http.stream("POST", url, json=body) as r:
            data = await r.aread()
        if r.status_code != 200:
            return "clean" if _clean_error(r.status_code, data) else "unclean"
        events = [e[6:] for e in data.split(b"\n\n") if e.startswith(b"data: ")]
        if events and events[-1] == b"[DONE]":
            return "ok"
        if events and b'"error"' in events[-1]:
            return "clean" if _clean_error(502, events[-1]) else "unclean"
        return "unclean"
    except httpx.HTTPError:
        return "unclean"


async def drive(url: str, model: str, clients: int, seconds: float) -> dict[str, int]:
    counts = {"ok": 0, "clean": 0, "unclean": 0}
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=30) as http:
        async def client(k: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                counts[await one(http, url, model, (k + n) % 2 == 1)] += 1
                n += 1
        await asyncio.gather(*(client(k) for k in range(clients)))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tandem-faults-"))
    fault = FaultUpstream().start()
    fault.set_mix(MIX)
    backup = start_fake(tmp)
    flaky = {"backend": "openai", "base_url": fault.url, "model": "fault", "max_retries": 1,
             "read_timeout_s": 1.0, "connect_timeout_s": 1.0}
    try:
        gw = start_gateway({"models": {
            "flaky": flaky, "flaky-alone": flaky,
            "backup": {"backend": "openai", "base_url": backup.url + "/v1", "model": "fake"},
            "local": {"backend": "llama_cpp", "n_ctx": 1024,
                      "model": str(resolve("qwen2.5-coder-0.5b-instruct", progress=False))}},
            "routing": {"default": "flaky", "fallback": ["flaky", "backup", "local"]}}, tmp,
            ready_path="/health")
        try:
            url = gw.url + "/v1/chat/completions"
            with_fallback = asyncio.run(drive(url, "flaky", args.clients, args.seconds))
            without = asyncio.run(drive(url, "flaky-alone", args.clients, args.seconds))
        finally:
            gw.stop()
    finally:
        backup.stop()
        fault.stop()
    print(f"faults: {machine()}; cloud fault mix: 10% 500, 5% 429, 3% hang 3 s, "
          f"5% cut stream, 3% malformed event; {args.clients} clients x {args.seconds:.0f} s")
    rows = []
    for name, c in (("with fallback", with_fallback), ("no fallback", without)):
        total = sum(c.values())
        rows.append([name, total, c["ok"], c["clean"], c["unclean"]])
    print_table(["model", "requests", "ok", "clean errors", "unclean errors"], rows)
    print("with fallback: failures before the first byte go to 'backup'; streams broken "
          "mid-way are continued by 'local' from the text already sent")
    emit_json({"bench": "faults", "client_failures": with_fallback["clean"]
               + with_fallback["unclean"], "unclean_errors": with_fallback["unclean"]
               + without["unclean"], "requests": sum(with_fallback.values())
               + sum(without.values()), "no_fallback_failures": without["clean"]
               + without["unclean"]})


if __name__ == "__main__":
    main()
