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

    .venv/bin/python bench/proxy_tuning.py [--tokens 48] [--prompts 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from common import emit_json, machine, print_table  # noqa: I001

from clients.model_store import resolve
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


async def step_times(rt: Runtime, n: int) -> dict[str, float]:
    """ms per token: each model alone on its scorer, then the proxy-tuned lockstep."""
    pt = rt.clients["pt-local"]
    parts = (await pt._parts()).parts
    prompt = rt.clients["small"].prompt_tokens({"messages": [
        {"role": "user", "content": PROMPTS[0]}]})
    out = {}
    for label, scorer in (("large", parts.base), ("small", parts.expert)):
        s = await scorer.open()
        await s.extend(prompt)
        t0 = time.perf_counter()
        for i in range(n):
            await s.extend([prompt[i % len(prompt)]])
        out[label] = (time.perf_counter() - t0) * 1000 / n
        await s.close()
    body = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": n,
            "temperature": 0}
    await pt.chat(dict(body, max_tokens=2))  # warm
    before = pt.stats.tokens
    t0 = time.perf_counter()
    first = None
    async for chunk in pt.chat_stream(body):
        if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter()  # the prompt is done: time the decode steps only
    tokens = pt.stats.tokens - before
    out["proxy"] = (time.perf_counter() - (first or t0)) * 1000 / max(1, tokens - 1)
    # tokens/s end to end: proxy-tuned vs the base alone through its chat engine
    t0 = time.perf_counter()
    r = await rt.clients["large"].chat(dict(body))
    out["base_tps"] = r["usage"]["completion_tokens"] / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    r = await pt.chat(dict(body))
    out["proxy_tps"] = r["usage"]["completion_tokens"] / (time.perf_counter() - t0)
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
        steps = await step_times(rt, args.tokens)
        remote = await remote_modes(rt, args.prompts, args.tokens)
    finally:
        await rt.close()
        cloud.stop()
    floor = steps["large"] + 2 * steps["small"]
    ratio = steps["proxy"] / floor
    print(f"machine: {machine()}")
    print_table(["local", "ms/token"], [
        ["1.5B base alone (scorer step)", steps["large"]],
        ["0.5B alone (scorer step)", steps["small"]],
        ["sum of the three (floor)", floor],
        ["proxy-tuned lockstep", steps["proxy"]],
    ])
    print(f"step ratio (proxy / sum): {ratio:.3f}; tokens/s proxy {steps['proxy_tps']:.1f} "
          f"vs base alone {steps['base_tps']:.1f}")
    ref = remote["reference"]["texts"]
    rows = []
    for mode, r in remote.items():
        rows.append([mode, r["tokens"], r["calls_per_token"], r["full_calls"],
                     r["seconds"] / max(1, r["tokens"]) * 1000, r["texts"] == ref])
    print_table(["remote mode", "tokens", "base calls/token", "full-vocab calls",
                 "ms/token", "same as reference"], rows)
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
    asyncio.run(main(parser.parse_args()))
