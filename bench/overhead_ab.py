"""This checkout's gateway against another checkout's, at one open-loop rate, in
interleaved repetitions: the A/B behind a hot-path change (one gateway_overhead run is
one 5-second sample per path, and this machine moves by ±30% between minutes).

Both gateways and the fake upstream (bench/fake_upstream.py) run side by side; each
repetition runs direct, then both gateways (order alternating), each for ``--seconds``
under k6's constant-arrival-rate (bench/wrk_load.run_rate). Reported per path: added
p50/p99 (against the median direct run) and the gateway's CPU ms per request, every
repetition and the median.

    git worktree add /tmp/base <commit>
    .venv/bin/python bench/overhead_ab.py --baseline /tmp/base [--rate 200] [--reps 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from common import ROOT, emit_json, machine, print_table  # noqa: I001

from bench.fake_upstream import start_fake
from tests.support.servers import start_gateway
from wrk_load import run_rate, with_cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, required=True, help="the other checkout")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tandem-ab-"))
    fake = start_fake(tmp)
    config = {"models": {"cloud": {"backend": "openai", "base_url": fake.url + "/v1",
                                   "model": "fake", "max_retries": 0}},
              "routing": {"default": "cloud"}}
    gateways = {"this": start_gateway(config, tmp, name="this"),
                "baseline": start_gateway(config, tmp, name="baseline",
                                          cwd=args.baseline.resolve())}
    runs: dict[str, list[dict]] = {"direct": [], "this": [], "baseline": []}
    try:
        for gw in gateways.values():  # warm-up
            run_rate(gw.url + "/v1/chat/completions", args.rate / 2, 2)
        for rep in range(args.reps):
            runs["direct"].append(run_rate(fake.url + "/v1/chat/completions", args.rate,
                                           args.seconds))
            for name in (("this", "baseline") if rep % 2 == 0 else ("baseline", "this")):
                gw = gateways[name]
                runs[name].append(with_cpu(gw.proc.pid, lambda: run_rate(
                    gw.url + "/v1/chat/completions", args.rate, args.seconds)))
    finally:
        for gw in gateways.values():
            gw.stop()
        fake.stop()
    d50 = statistics.median(r["p50_ms"] for r in runs["direct"])
    d99 = statistics.median(r["p99_ms"] for r in runs["direct"])
    out = {}
    rows = []
    for name in ("this", "baseline"):
        a50 = [r["p50_ms"] - d50 for r in runs[name]]
        a99 = [r["p99_ms"] - d99 for r in runs[name]]
        cpu = [r["cpu_ms_per_request"] for r in runs[name]]
        out[name] = {"added_p50_ms": round(statistics.median(a50), 3),
                     "added_p99_ms": round(statistics.median(a99), 3),
                     "cpu_ms_per_request": round(statistics.median(cpu), 3),
                     "errors": sum(r["errors"] + r["dropped"] for r in runs[name])}
        rows.append([name, out[name]["added_p50_ms"], " ".join(f"{v:.2f}" for v in a50),
                     out[name]["added_p99_ms"], out[name]["cpu_ms_per_request"],
                     " ".join(f"{v:.2f}" for v in cpu), out[name]["errors"]])
    wins = sum(t["p50_ms"] < b["p50_ms"] for t, b in zip(runs["this"], runs["baseline"]))
    print(f"overhead_ab: {machine()}; k6 {args.rate:g} req/s open loop, {args.reps} reps x "
          f"{args.seconds} s; baseline {args.baseline}; direct p50 median {d50:.3f} ms")
    print_table(["gateway", "added p50 (median)", "added p50 per rep", "added p99 (median)",
                 "CPU ms/req (median)", "CPU ms/req per rep", "failed+dropped"], rows)
    print(f"this checkout's p50 below the baseline's in {wins} of {args.reps} repetitions")
    emit_json({"bench": "overhead_ab", "rate": args.rate, "reps": args.reps,
               "baseline": str(args.baseline), "direct_p50_ms": round(d50, 3),
               "this": out["this"], "baseline_gateway": out["baseline"], "p50_wins": wins})


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
