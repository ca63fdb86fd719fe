"""The upstream client alone: CPU and wall time per non-streamed POST against the fast
fake upstream, clients/http1.py's pool against a pooled aiohttp session (what the
gateway used before), one request at a time, the two taking turns ``--reps`` times.

    .venv/bin/python bench/upstream_client.py [--requests 3000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path

from common import emit_json, machine, print_table  # noqa: I001

import aiohttp
import orjson
import uvloop

from bench.fake_upstream import start_fake
from clients.http1 import Http1Pool

PAYLOAD = orjson.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def timed(post, n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per request over ``n`` requests, after 200 to warm up."""
    for _ in range(200):
        orjson.loads(await post())
    c0, t0 = cpu_s(), time.perf_counter()
    for _ in range(n):
        orjson.loads(await post())
    return (cpu_s() - c0) / n * 1e3, (time.perf_counter() - t0) / n * 1e3


async def with_aiohttp(url: str, n: int) -> tuple[float, float]:
    async with aiohttp.ClientSession(headers=HEADERS,
                                     connector=aiohttp.TCPConnector(limit=256)) as http:
        async def post() -> bytes:
            async with http.post(url, data=PAYLOAD) as resp:
                return await resp.read()
        return await timed(post, n)


async def with_pool(url: str, n: int) -> tuple[float, float]:
    pool = Http1Pool(url, HEADERS, 256, 5.0, 120.0)

    async def post() -> bytes:
        return (await pool.post(url, PAYLOAD)).body
    try:
        return await timed(post, n)
    finally:
        await pool.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    fake = start_fake(Path(tempfile.mkdtemp(prefix="tandem-upstream-client-")))
    url = fake.url + "/v1/chat/completions"
    clients = {"http1 pool": with_pool, "aiohttp": with_aiohttp}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    try:
        for _ in range(args.reps):
            for name, run in clients.items():
                runs[name].append(uvloop.run(run(url, args.requests)))
    finally:
        fake.stop()
    print(f"upstream_client: {machine()}; {args.requests} sequential POSTs x {args.reps} reps "
          "against bench/fake_upstream.py")
    med = {name: (statistics.median(c for c, _ in r), statistics.median(w for _, w in r))
           for name, r in runs.items()}
    print_table(["client", "CPU ms/req (median)", "per rep", "wall ms/req (median)"],
                [[name, round(med[name][0], 3), " ".join(f"{c:.3f}" for c, _ in r),
                  round(med[name][1], 3)] for name, r in runs.items()])
    emit_json({"bench": "upstream_client", "requests": args.requests, "reps": args.reps,
               "http1_cpu_ms": round(med["http1 pool"][0], 4),
               "aiohttp_cpu_ms": round(med["aiohttp"][0], 4),
               "http1_wall_ms": round(med["http1 pool"][1], 4),
               "aiohttp_wall_ms": round(med["aiohttp"][1], 4)})


if __name__ == "__main__":
    main()
