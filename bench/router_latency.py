"""Routing decision latency: prompts of ~16, 128 and 512 tokens and a 5-turn conversation,
through the router object (embed + score, every kind) and through the gateway.

"Through the gateway" = `router-<kind>-0.0` (always the strong model: a fast fake
upstream) minus the same request sent with the strong model's own name, same run, so
the difference is what the decision costs a caller.

    .venv/bin/python bench/router_latency.py [--n 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import emit_json, machine, percentile, print_table  # noqa: I001

import httpx
import numpy as np

from bench.fake_upstream import start_fake
from routers import checkpoint
from routers.base import LearnedRouter, make_embedder
from routers.learned import KNNScorer, LogisticScorer, MFScorer
from tests.support.servers import start_gateway

WORDS = ("function return value list sort python error index class method async "
         "thread lock memory graph tree node proof lemma bound").split()


def prompt(tokens: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=max(1, int(tokens * 0.75))))  # ~1.3 tokens/word


def cases() -> dict[str, list[dict]]:
    out = {f"{t} tokens": [{"role": "user", "content": prompt(t, t)}] for t in (16, 128, 512)}
    turns = []
    for i in range(5):
        turns += [{"role": "user", "content": prompt(60, i)},
                  {"role": "assistant", "content": prompt(60, 100 + i)}]
    out["5 turns"] = turns[:-1]
    return out


def train_all(embedder, tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    texts = [prompt(int(rng.integers(8, 400)), i) for i in range(400)]
    X = embedder.embed(texts)
    y = (rng.random(len(texts)) < 0.5).astype(float)
    paths = {}
    for scorer in (MFScorer.train(X, y, epochs=50), KNNScorer.train(X, y),
                   LogisticScorer.train(X, y, epochs=50)):
        paths[scorer.kind] = tmp / f"{scorer.kind}.npz"
        checkpoint.save(paths[scorer.kind], scorer, embedder.name, embedder.dim)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tandem-router-"))
    embedder = make_embedder("hashing-4096")
    paths = train_all(embedder, tmp)
    rows, figures = [], {}
    for kind, path in paths.items():
        scorer, _ = checkpoint.load(path, embedder.name, embedder.dim)
        router = LearnedRouter(embedder, scorer)
        for name, messages in cases().items():
            for _ in range(20):
                router.p_strong(messages)
            times = []
            for _ in range(args.n):
                t0 = time.perf_counter()
                router.p_strong(messages)
                times.append((time.perf_counter() - t0) * 1000)
            rows.append([kind, name, "router object", percentile(times, 50),
                         percentile(times, 99)])
            if name == "512 tokens":
                figures[kind] = (percentile(times, 50), percentile(times, 99))

    fake = start_fake(tmp)
    try:
        gw = start_gateway({"models": {
            "cloud": {"backend": "openai", "base_url": fake.url + "/v1", "model": "fake",
                      "max_retries": 0},
            "cheap": {"backend": "openai", "base_url": fake.url + "/v1", "model": "fake",
                      "max_retries": 0}},
            "routing": {"default": "cheap", "strong": "cloud", "weak": "cheap",
                        "routers": {k: str(p) for k, p in paths.items()}}}, tmp)
        try:
            with httpx.Client(timeout=30) as http:
                def timed(model: str, messages: list[dict]) -> list[float]:
                    out = []
                    for i in range(args.n + 20):
                        t0 = time.perf_counter()
                        r = http.post(gw.url + "/v1/chat/completions",
                                      json={"model": model, "messages": messages})
                        assert r.status_code == 200, r.text
                        if i >= 20:
                            out.append((time.perf_counter() - t0) * 1000)
                    return out

                for name, messages in cases().items():
                    base = timed("cloud", messages)
                    routed = timed("router-mf-0.0", messages)
                    rows.append(["mf", name, "gateway, added",
                                 percentile(routed, 50) - percentile(base, 50),
                                 percentile(routed, 99) - percentile(base, 99)])
                    if name == "512 tokens":
                        figures["gateway"] = (percentile(routed, 50) - percentile(base, 50),
                                              percentile(routed, 99) - percentile(base, 99))
        finally:
            gw.stop()
    finally:
        fake.stop()
    print(f"router_latency: {machine()}; embedder {embedder.name}")
    print_table(["kind", "input", "path", "p50 ms", "p99 ms"], rows)
    worst = max(figures[k][1] for k in paths)
    emit_json({"bench": "router_latency", "embedder": embedder.name,
               "p50_ms_512": round(max(figures[k][0] for k in paths), 3),
               "p99_ms_512": round(worst, 3),
               "gateway_added_p50_ms_512": round(figures["gateway"][0], 3),
               "gateway_added_p99_ms_512": round(figures["gateway"][1], 3)})


if __name__ == "__main__":
    main()
