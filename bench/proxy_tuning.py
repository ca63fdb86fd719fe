"""Proxy-tuning speed: Qwen2.5-Coder-1.5B base, 0.5B expert (a system prompt the base
never sees) and 0.5B anti-expert, on this machine.

1. Local step time: the three models in lockstep vs the sum of the single-model step
   times, each measured on the same scoring contexts in the same run (the floor on a
   CPU); and tokens/s of the proxy-tuned model vs the base alone (the base's own chat
   engine).
2. Remote base (a second Tandem process serving the 1.5B on /v1/completions, as vLLM
   would): base calls per generated token and wall time of the reference (one
   whole-vocabulary call per token), certified (top-k) and speculative modes, and
   whether their greedy outputs equal the reference's.

    .venv/bin/python bench/proxy_tuning.py [--tokens 48] [--prompts 4] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from common import emit_json, machine, print_table  # noqa: I001

from clients.model_store import resolve
from clients.proxy_tuning.decoder import DecodeStats, Parts, ProxyDecoder, Sampling
from server.config import parse_config
from server.runtime import Runtime
from tests.support.servers import start_gateway

EXPERT_SYSTEM = ("You are a senior Python engineer. Every function you write has full type "
                 "hints and a one-line docstring.")
PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python function that merges two sorted lists.",
    "Write a Python function that counts the words in a text.",
    "Write a Python function that flattens a nested list.",
    "Write a Python function that returns the prime numbers below n.",
]


def config(cloud_url: str | None) -> dict:
    small = {"backend": "llama_cpp", "model": "qwen2.5-coder-0.5b-instruct", "n_ctx": 1024,
             "parallel": 1}
    models = {
        "small": small,
        "large": {**small, "model": "qwen2.5-coder-1.5b-instruct"},
        "pt-local": {"backend": "proxy_tuning", "base": "large", "expert": "small",
                     "anti_expert": "small", "expert_system": EXPERT_SYSTEM, "n_ctx": 1024},
    }
    if cloud_url:
        models["cloud"] = {"backend": "openai", "base_url": cloud_url,
                           "model": "large", "read_timeout_s": 600, "max_retries": 0}
        for mode in ("reference", "certified", "speculative"):
            models[f"pt-{mode}"] = {**models["pt-local"], "base": "cloud", "mode": mode}
    return {"models": models, "routing": {"default": "small"}}


async def step_times(rt: Runtime, rounds: int, per: int) -> dict[str, float]:
    """ms per token: each model alone on its scorer, and the proxy-tuned lockstep,
    interleaved in rounds (this machine's load drifts; medians of per-round figures)."""
    pt = rt.clients["pt-local"]
    parts = (await pt._parts()).parts
    body = {"messages": [{"role": "user", "content": PROMPTS[0]}]}
    prompts = await asyncio.to_thread(pt._prompts, body)
    alone = {"large": await parts.base.open(), "small": await parts.expert.open()}
    await alone["large"].extend(prompts.base)
    await alone["small"].extend(prompts.expert)
    decoder = ProxyDecoder(Parts(**{**parts.__dict__, "stats": DecodeStats()}))
    tokens = decoder.generate(prompts, Sampling(0.0, max_tokens=10**6))
    await tokens.__anext__()  # the prompts are in: from here on, decode steps only
    per_round: dict[str, list[float]] = {"large": [], "small": [], "proxy": [], "ratio": []}
    for _ in range(rounds):
        for label, session in alone.items():
            t0 = time.perf_counter()
            for i in range(per):
                await session.extend([prompts.base[i]])
            per_round[label].append((time.perf_counter() - t0) * 1000 / per)
        t0 = time.perf_counter()
        for _ in range(per):
            await tokens.__anext__()
        per_round["proxy"].append((time.perf_counter() - t0) * 1000 / per)
        floor = per_round["large"][-1] + 2 * per_round["small"][-1]
        per_round["ratio"].append(per_round["proxy"][-1] / floor)
    await tokens.aclose()
    for session in alone.values():
        await session.close()
    out = {k: statistics.median(v) for k, v in per_round.items()}
    # tokens/s end to end: the base alone through its chat engine vs proxy-tuned
    chat = {"messages": body["messages"], "max_tokens": per * 4, "temperature": 0}
    for label, client in (("base_tps", rt.clients["large"]), ("proxy_tps", pt)) * 2:
        t0 = time.perf_counter()
        r = await client.chat(dict(chat))
        tps = r["usage"]["completion_tokens"] / (time.perf_counter() - t0)
        out[label] = max(out.get(label, 0.0), tps)
    return out


async def remote_modes(rt: Runtime, n_prompts: int, n: int) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for mode in ("reference", "certified", "speculative"):
        client = rt.clients[f"pt-{mode}"]
        texts, t0 = [], time.perf_counter()
        tokens0, calls0 = client.stats.tokens, client.stats.base_calls
        for p in PROMPTS[:n_prompts]:
            r = await client.chat({"messages": [{"role": "user", "content": p}],
                                   "max_tokens": n, "temperature": 0})
            texts.append(r["choices"][0]["message"]["content"])
        tokens = client.stats.tokens - tokens0
        results[mode] = {"texts": texts, "seconds": time.perf_counter() - t0,
                         "tokens": tokens,
                         "calls_per_token": (client.stats.base_calls - calls0) / tokens,
                         "full_calls": client.stats.full_calls,
                         "accepted": client.stats.accepted, "drafted": client.stats.drafted}
    return results


async def main(args) -> None:
    for name in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"):
        resolve(name)
    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    cloud = start_gateway({"server": {"max_logprobs": -1},
                           "models": {"large": {"backend": "llama_cpp", "n_ctx": 2048,
                                                "model": "qwen2.5-coder-1.5b-instruct"}},
                           "routing": {"default": "large"}}, tmp, name="cloud")
    rt = Runtime(parse_config(config(cloud.url + "/v1")), None, None)
    try:
        await rt.start()
        await rt.wait_loaded(600)
        steps = await step_times(rt, args.rounds, 8)
        remote = await remote_modes(rt, args.prompts, args.tokens)
    finally:
        await rt.close()
        cloud.stop()
    floor = steps["large"] + 2 * steps["small"]
    ratio = steps["ratio"]
    print(f"machine: {machine()}")
    print_table(["local", "ms/token"], [
        ["1.5B base alone (scorer step)", steps["large"]],
        ["0.5B alone (scorer step)", steps["small"]],
        ["sum of the three (floor)", floor],
        ["proxy-tuned lockstep", steps["proxy"]],
    ])
    print(f"step ratio (proxy / sum, median of {args.rounds} rounds): {ratio:.3f}; tokens/s proxy {steps['proxy_tps']:.1f} "
          f"vs base alone {steps['base_tps']:.1f}")
    ref = remote["reference"]["texts"]
    rows = []
    for mode, r in remote.items():
        same = sum(a == b for a, b in zip(r["texts"], ref))
        rows.append([mode, r["tokens"], r["calls_per_token"], r["full_calls"],
                     r["seconds"] / max(1, r["tokens"]) * 1000, f"{same}/{len(ref)}"])
    print_table(["remote mode", "tokens", "base calls/token", "full-vocab calls",
                 "ms/token", "prompts same as reference"], rows)
    spec = remote["speculative"]
    emit_json({
        "bench": "proxy_tuning", "machine": machine(),
        "local_step_ratio": round(ratio, 3),
        "local_ms": {k: round(steps[k], 2) for k in ("large", "small", "proxy")},
        "proxy_tps": round(steps["proxy_tps"], 2), "base_tps": round(steps["base_tps"], 2),
        "remote_calls_per_token": round(spec["calls_per_token"], 3),
        "remote_ms_per_token": {m: round(r["seconds"] / max(1, r["tokens"]) * 1000, 1)
                                for m, r in remote.items()},
        "acceptance": round(spec["accepted"] / max(1, spec["drafted"]), 3),
        "identical_to_reference": all(r["texts"] == ref for r in remote.values()),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
