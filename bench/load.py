"""Sustained load on loopback: 200 concurrent clients for a bounded time, twice.

1. Tandem in front of the fast fake upstream (``cloud``), streaming and not, mixed.
2. Tandem's local model (Qwen2.5-Coder-0.5B, batched), short answers.
Reports errors, latency percentiles, the gateway's RSS and open file descriptors after
warm-up and after the run (fd and thread counts back at their start values means no
leaked sockets or workers). Loopback only; every loop is bounded in time.

    .venv/bin/python bench/load.py [--clients 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from common import emit_json, machine, percentile, print_table  # noqa: I001

import httpx

from bench.fake_upstream import start_fake
from clients.model_store import resolve
from tests.support.servers import start_gateway


def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def run_clients(url: str, model: str, clients: int, seconds: float,
                      max_tokens: int) -> tuple[list[float], int, dict[str, int]]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:

        async def client(k: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                stream = (k + n) % 2 == 1
                body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                        "stream": stream,
                        "messages": [{"role": "user", "content": f"Say a word ({k}, {n})."}]}
                n += 1
                t0 = time.perf_counter()
                try:
                    if stream:
                        async with http.stream("POST", url, json=body) as r:
                            tail = b""
                            async for piece in r.aiter_bytes():
                                tail = (tail + piece)[-64:]
                            ok = r.status_code == 200 and tail.endswith(b"data: [DONE]\n\n")
                            status = str(r.status_code) if r.status_code != 200 else "cut"
                    else:
                        r = await http.post(url, json=body)
                        ok = r.status_code == 200 and r.json()["choices"]
                        status = str(r.status_code)
                except httpx.HTTPError as err:
                    ok, status = False, type(err).__name__
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors[status] = errors.get(status, 0) + 1

        await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies, sum(errors.values()), errors


def phase(name: str, gw, model: str, args, max_tokens: int) -> dict:
    asyncio.run(run_clients(gw.url + "/v1/chat/completions", model, 8, 2, max_tokens))
    before = proc_stats(gw.proc.pid)
    lat, n_err, kinds = asyncio.run(run_clients(gw.url + "/v1/chat/completions", model,
                                                args.clients, args.seconds, max_tokens))
    time.sleep(2)  # let closed connections be reaped
    after = proc_stats(gw.proc.pid)
    return {"phase": name, "requests": len(lat) + n_err, "errors": n_err, "kinds": kinds,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "rps": len(lat) / args.seconds, "before": before, "after": after,
            "rss_growth_pct": 100 * (after["rss_mb"] - before["rss_mb"]) / before["rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tandem-load-"))
    path = resolve("qwen2.5-coder-0.5b-instruct", progress=False)
    fake = start_fake(tmp)
    try:
        gw = start_gateway({"models": {
            "cloud": {"backend": "openai", "base_url": fake.url + "/v1", "model": "fake",
                      "max_retries": 0},
            "local": {"backend": "llama_cpp", "model": str(path), "n_ctx": 1024,
                      "parallel": 8}},
            "routing": {"default": "cloud"}}, tmp)
        try:
            results = [phase("fake upstream", gw, "cloud", args, 16),
                       phase("local model", gw, "local", args, 4)]
        finally:
            gw.stop()
    finally:
        fake.stop()
    print(f"load: {machine()}; {args.clients} clients x {args.seconds:.0f} s per phase, "
          "half streaming")
    print_table(["phase", "requests", "errors", "rps", "p50 ms", "p99 ms", "RSS MB start",
                 "RSS MB end", "RSS growth %", "fds start/end", "threads start/end"],
                [[r["phase"], r["requests"], r["errors"], r["rps"], r["p50_ms"], r["p99_ms"],
                  r["before"]["rss_mb"], r["after"]["rss_mb"], r["rss_growth_pct"],
                  f"{r['before']['fds']}/{r['after']['fds']}",
                  f"{r['before']['threads']}/{r['after']['threads']}"] for r in results])
    for r in results:
        if r["kinds"]:
            print(f"{r['phase']} errors by kind: {r['kinds']}")
    emit_json({"bench": "load", "errors": sum(r["errors"] for r in results),
               "p99_ms": round(results[0]["p99_ms"], 2),
               "p99_ms_local": round(results[1]["p99_ms"], 1),
               "rss_growth_pct": round(max(r["rss_growth_pct"] for r in results), 2),
               "fd_growth": max(r["after"]["fds"] - r["before"]["fds"] for r in results),
               "requests": sum(r["requests"] for r in results)})


if __name__ == "__main__":
    main()
