"""Learning from traffic: a real gateway replays a labelled mix its router never saw.

The router starts from a checkpoint trained on every task type *but* the mix's (so the
mix is traffic it has never seen). The mix is split by a hash of each prompt's id:
the held-out part is only ever scored (dry runs, ``POST /v1/tandem/route``); the rest
is replayed as `tandem` traffic, and each answer gets the feedback its label says (the
weak or the strong model's score, whichever answered). After 0, 50, 100 and 200
feedback events (and the retrain they trigger), held-out APGR is measured with the
full labels. The upstreams are the fast fake one (answers do not matter here; labels
do), so the numbers are the router's, not the models'.

Also measured: the actual cloud share of the replayed traffic against the target,
the policy decision time inside the gateway (its own histogram), and, over a further
``--load`` requests with feedback on each (so retrains run while requests are served),
the latency of requests that started during a retrain against the others. That split
is not random (retrain windows fall where feedback has just piled up), so
``--placebo-reps N`` adds a control: N pairs of runs, one whose retrains are placebos
that sleep as long as the real ones took and do nothing (bench/placebo/), then a real
one. Requests in real retrain windows are then compared with requests in placebo
windows, pooled over the pairs, against the same permutation band: a retrain costs
serving p99 only if the real windows are slower than the placebo ones beyond chance.

    .venv/bin/python bench/router_online.py [--labels FILE] [--mix gsm8k,mbpp,...]
        [--placebo-reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from common import ROOT, emit_json, machine, percentile, print_table  # noqa: I001

import httpx
import numpy as np

from bench.fake_upstream import start_fake
from routers.evaluate import summary
from routers.tools import read_jsonl, split, targets, task_type, train
from tests.support.servers import start_gateway

LABELS = str(ROOT / "routers/data/broad-qwen0.5b-vs-1.5b.jsonl")
CHECKPOINTS = (0, 50, 100, 200)
RETRAIN_EVERY = 50


def pick_mix(rows: list[dict], k: int) -> list[str]:
    """The k types with the largest share of strong-needed prompts (a mix where
    routing matters), among types with at least 40 labelled prompts."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(task_type(r), []).append(r)
    ok = [t for t, rs in by.items() if len(rs) >= 40]
    return sorted(ok, key=lambda t: -float(np.mean(targets(by[t]))))[:k]


def config(fake_url: str, ckpt: Path, base: Path, tmp: Path, kind: str, fraction: float,
           explore: float, embedder: str) -> dict:
    upstream = {"backend": "openai", "base_url": fake_url, "model": "fake", "max_retries": 0}
    return {"server": {"access_log": False},
            "models": {"local": upstream, "cloud": dict(upstream)},
            "routing": {"default": "local", "strong": "cloud", "weak": "local",
                        "routers": {kind: str(ckpt)},
                        "router": {"kind": kind, "cloud_fraction": fraction},
                        "embedder": embedder,
                        "learning": {"enabled": True, "explore": explore,
                                     "retrain_every": RETRAIN_EVERY,
                                     "holdout": 0.2, "base_labels": str(base),
                                     "checkpoint_dir": str(tmp / "ckpts"), "poll_s": 1}},
            "state": {"sqlite_path": str(tmp / "state.sqlite")}}


async def held_out_apgr(http: httpx.AsyncClient, rows: list[dict]) -> float:
    sem = asyncio.Semaphore(8)

    async def score(r: dict) -> float:
        async with sem:
            resp = await http.post("/v1/tandem/route", json={"model": "tandem",
                                                             "messages": r["messages"]})
        resp.raise_for_status()
        return resp.json()["p_strong"]

    p = np.array(await asyncio.gather(*(score(r) for r in rows)))
    weak = np.array([r["weak_score"] for r in rows], float)
    strong = np.array([r["strong_score"] for r in rows], float)
    return summary(p, weak, strong)["apgr"]


async def wait_trained(http: httpx.AsyncClient, labels: int, timeout_s: float = 300,
                       slack: int = 0) -> dict:
    """The router status once a retrain has seen ``labels`` labels, less ``slack`` (a
    retrain that started a few labels early leaves fewer than ``retrain_every`` new
    ones after it, so none is due), and none is running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = (await http.get("/v1/tandem/router")).json()
        trained = s["learning"]["trained_on_labels"]
        if trained >= labels - slack and not s["learning"]["retraining"]:
            return s
        await asyncio.sleep(0.2)
    raise RuntimeError(f"no retrain after {labels} labels")


async def replay(http: httpx.AsyncClient, rows: list[dict], concurrency: int,
                 log: list[dict]) -> None:
    """Each row as `tandem` traffic, then feedback with the score of the model that
    answered; every request's latency and route go to ``log``."""
    sem = asyncio.Semaphore(concurrency)

    async def one(r: dict) -> None:
        async with sem:
            t0 = time.perf_counter()
            resp = await http.post("/v1/chat/completions", json={
                "model": "tandem", "messages": r["messages"], "max_tokens": 8})
            t1 = time.perf_counter()
            resp.raise_for_status()
            route = resp.headers["x-tandem-route"]
            score = r["strong_score"] if route == "cloud" else r["weak_score"]
            fb = await http.post("/v1/tandem/feedback", json={
                "request_id": resp.headers["x-request-id"], "score": score})
            fb.raise_for_status()
            log.append({"start": time.time() - (t1 - t0), "latency": t1 - t0,
                        "strong": route == "cloud"})

    await asyncio.gather(*(one(r) for r in rows))


def p99_noise(during: list[float], outside: list[float], draws: int = 2000,
              seed: int = 0) -> float:
    """How far the p99 of ``during`` may sit above the p99 of ``outside`` by chance: the
    95th percentile of p99(A) / p99(B) when the pooled latencies are split at random
    into groups of the same sizes (a permutation test). With ~200 requests a side the
    p99 is about the third-slowest request, so this band is wide; a ratio inside it is
    "unchanged, within noise". Requests are treated as exchangeable (bursts are not)."""
    if not during or not outside:
        return float("nan")
    pooled = np.array(during + outside)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(draws):
        rng.shuffle(pooled)
        a, b = pooled[: len(during)], pooled[len(during):]
        ratios.append(np.percentile(a, 99) / np.percentile(b, 99))
    return float(np.percentile(ratios, 95))


def decision_p(metrics: str, bound: str = "0.005") -> tuple[float, int]:
    """(share of decisions at or under ``bound`` s, count) from the gateway histogram."""
    le, count = 0.0, 0
    for line in metrics.splitlines():
        if line.startswith("tandem_router_decision_seconds_bucket") and f'le="{bound}"' in line:
            le = float(line.rsplit(" ", 1)[1])
        if line.startswith("tandem_router_decision_seconds_count"):
            count = int(float(line.rsplit(" ", 1)[1]))
    return (le / count if count else float("nan")), count


async def run(args, rows: list[dict], tmp: Path, env: dict[str, str] | None = None) -> dict:
    mix = args.mix.split(",") if args.mix else pick_mix(rows, args.mix_types)
    base_rows = [r for r in rows if task_type(r) not in mix]
    mix_rows = [r for r in rows if task_type(r) in mix]
    traffic, held = split(mix_rows, 0.3)
    random.Random(0).shuffle(traffic)
    base = tmp / "base.jsonl"
    base.write_text("".join(json.dumps(r) + "\n" for r in base_rows))
    ckpt = tmp / f"base-{args.kind}.npz"
    train(args.kind, str(base), str(ckpt), args.embedder, 0.2)
    fake = start_fake(tmp)
    gw = start_gateway(config(fake.url + "/v1", ckpt, base, tmp, args.kind, args.cloud_fraction,
                              args.explore, args.embedder), tmp, name="online", env=env)
    log: list[dict] = []
    out: dict = {"mix": mix, "traffic": len(traffic), "held_out": len(held),
                 "base_rows": len(base_rows), "stages": []}
    try:
        async with httpx.AsyncClient(base_url=gw.url, timeout=120) as http:
            done = 0
            for events in CHECKPOINTS:
                if events > len(traffic):
                    break
                await replay(http, traffic[done:events], args.concurrency, log)
                done = events
                status = (await wait_trained(http, events) if events
                          else (await http.get("/v1/tandem/router")).json())
                apgr = await held_out_apgr(http, held)
                last = status["learning"]["last_retrain"] or {}
                out["stages"].append({"events": events, "apgr": apgr,
                                      "version": status["checkpoint"]["version"],
                                      "outcome": last.get("outcome", "-"),
                                      "gate": last.get("gate", "-"),
                                      "actual": status["cloud_fraction"]["actual"]})
            # load: more traffic with feedback on every answer, so retrains (every 50
            # labels) run while requests are served; latencies are split by that below
            extra = (traffic * (1 + args.load // max(1, len(traffic))))[: args.load]
            await replay(http, extra, args.concurrency, log)
            # the last retrain the load triggered (one per RETRAIN_EVERY labels)
            await wait_trained(http, done + len(extra), slack=RETRAIN_EVERY - 1)
            metrics = (await http.get("/metrics")).text
            final = (await http.get("/v1/tandem/router")).json()
    finally:
        gw.stop()
        fake.stop()
    out["decision_share_le_5ms"], out["decisions"] = decision_p(metrics)
    out["decision_share_le_1ms"], _ = decision_p(metrics, "0.001")
    out["windows"] = [(r["at"] - r["seconds"], r["at"]) for r in final["learning"]["history"]]
    out["retrain_s"] = [r["seconds"] for r in final["learning"]["history"]]
    out["log"] = log
    return out


def latency_split(out: dict) -> dict:
    """Latencies of requests that started during a retrain window and outside all, the
    p99 ratio of the two and its permutation noise band."""
    windows = out["windows"]
    inside = [any(a <= e["start"] <= b for a, b in windows) for e in out["log"]]
    during = [e["latency"] for e, i in zip(out["log"], inside) if i]
    outside = [e["latency"] for e, i in zip(out["log"], inside) if not i]
    ratio = (percentile(during, 99) / percentile(outside, 99)) if during and outside else None
    return {"during": during, "outside": outside, "ratio": ratio,
            "noise": p99_noise(during, outside), "windows": len(windows)}


def measure(args, rows: list[dict], placebo_s: float | None = None) -> dict:
    """One run of the whole replay; with ``placebo_s``, its retrains are placebos
    (bench/placebo/sitecustomize.py) that sleep, or spin, that long."""
    env = None
    if placebo_s is not None:
        env = {"TANDEM_BENCH_PLACEBO_S": f"{placebo_s:.3f}",
               "TANDEM_BENCH_PLACEBO_KIND": args.placebo_kind,
               "PYTHONPATH": str(ROOT / "bench" / "placebo")}
    with tempfile.TemporaryDirectory() as d:
        out = asyncio.run(run(args, rows, Path(d), env))
    return {**out, **latency_split(out)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", default=LABELS)
    ap.add_argument("--mix", default="", help="task types replayed (default: picked)")
    ap.add_argument("--mix-types", type=int, default=3)
    ap.add_argument("--kind", default="classifier")
    ap.add_argument("--embedder", default="hashing-4096")
    ap.add_argument("--cloud-fraction", type=float, default=0.3)
    ap.add_argument("--explore", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--load", type=int, default=300,
                    help="requests replayed after the stages, to measure latency in retrains")
    ap.add_argument("--placebo-reps", type=int, default=0,
                    help="after the run, this many more pairs of runs, placebo then real: "
                         "the placebo's retrains sleep as long as the real ones took and "
                         "do nothing, a control for the during/outside split")
    ap.add_argument("--placebo-kind", choices=("sleep", "burn"), default="sleep",
                    help="the placebo sleeps, or spins on its core in L1 (the CPU a "
                         "retrain takes, without its memory traffic)")
    args = ap.parse_args()
    rows = read_jsonl(args.labels)
    out = measure(args, rows)
    real, placebo = [out], []
    for _ in range(args.placebo_reps):
        seconds = float(np.median(real[-1]["retrain_s"])) if real[-1]["retrain_s"] else 0.5
        placebo.append(measure(args, rows, placebo_s=seconds))
        real.append(measure(args, rows))
    during, outside, ratio, noise = (out[k] for k in ("during", "outside", "ratio", "noise"))
    actual = float(np.mean([e["strong"] for e in out["log"]])) if out["log"] else float("nan")
    print(f"router_online: {machine()}; {args.labels}; mix {','.join(out['mix'])}: "
          f"{out['traffic']} replayed, {out['held_out']} held out; base router {args.kind} on "
          f"{out['base_rows']} prompts of the other types; cloud_fraction "
          f"{args.cloud_fraction}, explore {args.explore}, embedder {args.embedder}")
    print_table(["feedback events", "held-out APGR", "version", "last retrain", "gated on",
                 "cloud share (recent)"],
                [[s["events"], s["apgr"], s["version"], s["outcome"], s["gate"],
                  "-" if s["actual"] is None else f"{s['actual']:.1%}"] for s in out["stages"]])
    print(f"cloud share over the whole replay: {actual:.1%} (target "
          f"{args.cloud_fraction:.0%})")
    print(f"decisions <= 1 ms: {out['decision_share_le_1ms']:.1%}, <= 5 ms: "
          f"{out['decision_share_le_5ms']:.1%} of {out['decisions']} (gateway histogram)")
    print(f"request latency p50/p99 outside retrains: {percentile(outside, 50) * 1000:.1f} / "
          f"{percentile(outside, 99) * 1000:.1f} ms (n={len(outside)}); during a retrain: "
          f"{percentile(during, 50) * 1000:.1f} / {percentile(during, 99) * 1000:.1f} ms "
          f"(n={len(during)}; {out['windows']} retrains)")
    if ratio is not None:
        print(f"p99 during / outside: {ratio:.2f}; by chance alone (permutation, 95th "
              f"percentile) up to {noise:.2f}: "
              + ("within noise" if ratio <= noise else "ABOVE noise"))
    figures = {}
    if placebo:
        print("p99 during / outside retrain windows, real retrains against placebos that "
              f"{args.placebo_kind} as long and do nothing:")
        print_table(["run", "retrains", "median retrain s", "p50 outside / during ms",
                     "p99 ratio", "permutation band"],
                    [[f"{name} {i + 1}", r["windows"],
                      round(float(np.median(r["retrain_s"])), 3) if r["retrain_s"] else "-",
                      f"{percentile(r['outside'], 50) * 1000:.1f} / "
                      f"{percentile(r['during'], 50) * 1000:.1f}",
                      round(r["ratio"], 3), round(r["noise"], 3)]
                     for name, runs in (("real", real), ("placebo", placebo))
                     for i, r in enumerate(runs)])
        # the control proper: requests in real retrain windows against requests in
        # placebo windows (same split, same replay, runs interleaved), pooled over reps
        paired = real[1:]
        real_during = [x for r in paired for x in r["during"]]
        placebo_during = [x for r in placebo for x in r["during"]]
        real_outside = [x for r in paired for x in r["outside"]]
        placebo_outside = [x for r in placebo for x in r["outside"]]
        cost = percentile(real_during, 99) / percentile(placebo_during, 99)
        cost_band = p99_noise(real_during, placebo_during)
        base = percentile(real_outside, 99) / percentile(placebo_outside, 99)
        print(f"p99 in real retrain windows / in placebo windows, {len(paired)} pairs pooled: "
              f"{cost:.3f} (n={len(real_during)} / {len(placebo_during)}); by chance alone "
              f"up to {cost_band:.3f}: "
              + ("within noise: no retrain cost on serving p99 beyond chance"
                 if cost <= cost_band else "ABOVE noise: retrains cost serving p99")
              + f"; outside the windows, real / placebo {base:.3f}")
        figures = {"p99_ratio_real_runs": [round(r["ratio"], 3) for r in real],
                   "p99_ratio_placebo_runs": [round(r["ratio"], 3) for r in placebo],
                   "p99_real_over_placebo_during": round(cost, 3),
                   "p99_real_over_placebo_noise_95": round(cost_band, 3),
                   "p99_real_over_placebo_outside": round(base, 3)}
    emit_json({"bench": "router_online", "mix": out["mix"], "kind": args.kind,
               **{f"apgr_after_{s['events']}": round(s["apgr"], 4) for s in out["stages"]},
               "versions": [s["version"] for s in out["stages"]],
               "cloud_fraction_target": args.cloud_fraction,
               "cloud_fraction_actual": round(actual, 4),
               "decision_share_le_5ms": round(out["decision_share_le_5ms"], 4),
               "p99_ms_outside_retrain": round(percentile(outside, 99) * 1000, 2),
               "p99_ms_during_retrain": round(percentile(during, 99) * 1000, 2)
               if during else None, "during_n": len(during),
               "p99_ratio_during_retrain": round(ratio, 3) if ratio is not None else None,
               "p99_ratio_noise_95": round(noise, 3), **figures})


if __name__ == "__main__":
    main()
