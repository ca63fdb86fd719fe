"""Does the default proxy-tuned model answer every request? 200 mixed requests, as users send.

Starts the embedded default stack (``tandem serve-stack``: the gateway, and the 1.5B
"cloud" stand-in that is ``house-style``'s remote base) on free ports, then sends
``--requests`` chat requests to ``house-style`` with the official openai SDK, ``--concurrency``
at a time, cycling through what clients do: short and longer ``max_tokens``, streamed
or not, with ``include_usage``, greedy or sampled with a seed, ``stop`` strings,
``logprobs``/``top_logprobs`` and ``response_format`` (json_object, json_schema). Counts
failures by kind (the goal is none) and finish reasons.

    .venv/bin/python bench/proxy_reliability.py [--requests 200] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import emit_json, machine, percentile, print_table  # noqa: I001

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "Write a Python function that reverses a string.",
    "What is 7 times 8?", "Say hi.", "Name three primary colours.",
    "Write a function that checks whether a number is prime.",
    "Explain what a list comprehension is in one sentence.",
    "Reply with one word: yes.", "Write a Python function that returns the max of a list.",
]
SCHEMA = {"type": "object", "required": ["answer"],
          "properties": {"answer": {"type": "string", "maxLength": 40}}}


def request(i: int) -> tuple[str, dict]:
    """The i-th request's kind and its SDK arguments."""
    kw: dict = {"model": "house-style", "max_tokens": (8, 16, 64)[i % 3],
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
    kind = ("plain", "stream+usage", "sampled", "stop", "logprobs", "json_object",
            "json_schema", "stream")[i % 8]
    if kind.startswith("stream"):
        kw["stream"] = True
        if kind == "stream+usage":
            kw["stream_options"] = {"include_usage": True}
    kw["temperature"] = 0.7 if kind == "sampled" else 0
    if kind == "sampled":
        kw["seed"] = i
    if kind == "stop":
        kw["stop"] = ["\n\n"]
    if kind == "logprobs":
        kw.update(logprobs=True, top_logprobs=2)
    if kind == "json_object":
        kw["response_format"] = {"type": "json_object"}
    if kind == "json_schema":
        kw["response_format"] = {"type": "json_schema",
                                 "json_schema": {"name": "a", "schema": SCHEMA}}
    return kind, kw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(args, url: str) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                timeout=600)
    gate = asyncio.Semaphore(args.concurrency)
    failures: collections.Counter = collections.Counter()
    finishes: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    seconds: list[float] = []
    bad_json = 0

    async def one(i: int) -> None:
        nonlocal bad_json
        kind, kw = request(i)
        async with gate:
            t0 = time.perf_counter()
            try:
                if kw.get("stream"):
                    stream = await client.chat.completions.create(**kw)
                    text, finish, usage = "", None, None
                    async for chunk in stream:
                        usage = chunk.usage or usage
                        for c in chunk.choices:
                            text += c.delta.content or ""
                            finish = c.finish_reason or finish
                    if kind == "stream+usage" and usage is None:
                        failures["no usage chunk"] += 1
                else:
                    r = await client.chat.completions.create(**kw)
                    text, finish = r.choices[0].message.content, r.choices[0].finish_reason
                    if kind == "logprobs" and not (r.choices[0].logprobs
                                                   and r.choices[0].logprobs.content):
                        failures["no logprobs"] += 1
                if kind.startswith("json") and finish == "stop":
                    try:
                        json.loads(text)
                    except ValueError:
                        bad_json += 1
                finishes[finish] += 1
                kinds[kind] += 1
            except openai.APIStatusError as err:
                failures[f"{err.status_code} {err.message[:120]}"] += 1
            except openai.APIError as err:
                failures[f"{type(err).__name__} {str(err)[:120]}"] += 1
            seconds.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(args.requests)))
    await client.close()
    return {"wall_s": time.perf_counter() - t0, "failures": dict(failures),
            "finishes": dict(finishes), "kinds": dict(kinds), "bad_json": bad_json,
            "p50_s": percentile(seconds, 50), "p99_s": percentile(seconds, 99)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    port, cloud = free_port(), free_port()
    log = open(ROOT / "bench" / "results" / "proxy_reliability.log", "wb")
    stack = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve-stack", "--port", str(port),
         "--cloud-port", str(cloud), "--log-level", "warning"], cwd=ROOT, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            raise SystemExit("the stack did not become ready")
        out = asyncio.run(run(args, url))
    finally:
        os.killpg(stack.pid, signal.SIGTERM)
        stack.wait(60)
    failed = sum(out["failures"].values())
    print(f"machine: {machine()}; {args.requests} requests to house-style (embedded "
          f"defaults), {args.concurrency} at a time, {out['wall_s']:.0f} s")
    print_table(["kind", "requests"], [[k, v] for k, v in sorted(out["kinds"].items())])
    print_table(["outcome", "count"],
                [[f"finish {k}", v] for k, v in out["finishes"].items()]
                + [[f"FAILED {k}", v] for k, v in out["failures"].items()]
                + [["json that ended but did not parse", out["bad_json"]]])
    emit_json({"bench": "proxy_reliability", "requests": args.requests,
               "concurrency": args.concurrency, "failures": failed,
               "failure_kinds": out["failures"], "finish_reasons": out["finishes"],
               "bad_json": out["bad_json"], "p50_s": round(out["p50_s"], 2),
               "p99_s": round(out["p99_s"], 2), "wall_s": round(out["wall_s"], 1)})


if __name__ == "__main__":
    main()
