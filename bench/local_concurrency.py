"""Concurrent local streams: Tandem's batch engine vs llama.cpp's llama-server vs
llama_cpp.server vs the raw ceiling.

At concurrency 1, 2, 4, 8 (distinct prompts, greedy, ``--max-tokens`` each), in one run:
- Tandem (one gateway, the model in-process, ``parallel: 8``);
- llama.cpp's own ``llama-server`` (``-np 8``, continuous batching, 4,096 context per
  slot), built from the llama.cpp source the Python binding vendors
  (bench/build_llama_server.sh): the anchor a user would pick instead. The same client
  (httpx, each SSE line parsed with orjson) reads both, so the load generator's own CPU
  is counted on both sides;
- llama-cpp-python's own server, ``interrupt_requests`` off (it serialises) and default
  (a new request interrupts the running one);
- the ceiling: a plain loop over llama.cpp's batch API (same weights, one decode per step
  for all sequences, greedy by argmax), prefill included as for the servers.
Tandem, llama-server and the ceiling take turns ``--reps`` times per level (medians
reported), so that drift of a shared machine hits all alike; the worst TTFT and drops are over all runs.
Aggregate tokens/s = all streams' tokens / wall time from the first request to the last
token. A stream is "dropped" when it errors or ends without a finish_reason.

    .venv/bin/python bench/local_concurrency.py [--max-tokens 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from common import emit_json, machine, print_table  # noqa: I001

import httpx
import numpy as np
import orjson

from clients.model_store import resolve
from tests.support.servers import ServerProcess, free_port, start_gateway

LEVELS = (1, 2, 4, 8)
ANCHOR = "llama-server -np 8"
TOPICS = ["rivers", "volcanoes", "the printing press", "bees", "glaciers", "compilers",
          "the moon", "bridges"]


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a detailed essay about {TOPICS[i]}."}]


async def stream_one(http: httpx.AsyncClient, url: str, model: str, i: int,
                     max_tokens: int, t0: float) -> dict:
    body = {"model": model, "messages": messages(i), "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    text, ttft, finish = [], None, None
    try:
        async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"text": "", "ttft": None, "finish": None, "end": time.perf_counter()}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = orjson.loads(line[6:])
                if "error" in chunk or not chunk.get("choices"):
                    continue
                choice = chunk["choices"][0]
                piece = choice.get("delta", {}).get("content")
                if piece:
                    ttft = ttft or time.perf_counter() - t0
                    text.append(piece)
                finish = choice.get("finish_reason") or finish
    except httpx.HTTPError:
        pass
    return {"text": "".join(text), "ttft": ttft, "finish": finish, "end": time.perf_counter()}


async def level(url: str, model: str, c: int, max_tokens: int) -> list[dict]:
    async with httpx.AsyncClient(timeout=600) as http:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(stream_one(http, url, model, i, max_tokens, t0)
                                         for i in range(c)))
    for r in results:
        r["t0"] = t0
    return results


def summarise(results: list[dict], count_tokens) -> dict:
    tokens = sum(count_tokens(r["text"]) for r in results)
    wall = max(r["end"] for r in results) - results[0]["t0"]
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    dropped = sum(1 for r in results if r["finish"] is None)
    return {"agg": tokens / wall, "ttft_p50": float(np.median(ttfts)) if ttfts else float("nan"),
            "ttft_max": max(ttfts) if ttfts else float("nan"), "dropped": dropped}


def ceiling(llm, prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
    """Aggregate tokens/s of a plain batch-API loop over ``len(prompts)`` sequences, and
    the greedy tokens it produced."""
    from clients.llama_cpp.internals import (batch_add, batch_clear, logits_row,
                                             new_parallel_context)

    n = len(prompts)
    ctx, batch = new_parallel_context(llm, 1024, n, 512, os.cpu_count() or 1)
    try:
        t0 = time.perf_counter()
        batch_clear(batch)
        last = {}
        for s, p in enumerate(prompts):
            for j, tok in enumerate(p):
                k = batch_add(batch, tok, j, s, j == len(p) - 1)
            last[s] = k
        ctx.decode(batch)
        pos = [len(p) for p in prompts]
        outs: list[list[int]] = [[] for _ in range(n)]
        for _ in range(max_tokens):
            nxt = [int(logits_row(ctx, last[s], llm.n_vocab()).argmax()) for s in range(n)]
            for s in range(n):
                outs[s].append(nxt[s])
            batch_clear(batch)
            for s in range(n):
                last[s] = batch_add(batch, nxt[s], pos[s], s, True)
                pos[s] += 1
            ctx.decode(batch)
        return n * max_tokens / (time.perf_counter() - t0), outs
    finally:
        batch.close()
        ctx.close()


def start_llama_cpp_server_bin(path: Path, tmp: Path) -> ServerProcess:
    """llama.cpp's llama-server, built (once, cached) by bench/build_llama_server.sh."""
    import subprocess

    binary = subprocess.run(["bench/build_llama_server.sh", sys.executable], check=True,
                            capture_output=True, text=True).stdout.strip().splitlines()[-1]
    port = free_port()
    return ServerProcess(
        [binary, "-m", str(path), "--port", str(port), "--host", "127.0.0.1", "-np", "8",
         "-c", str(4096 * 8), "-t", str(os.cpu_count()), "--cont-batching", "-a", "local",
         "--no-webui"],
        port, "/v1/models", tmp / "llama-server.log", timeout_s=120)


def start_llama_server(path: Path, tmp: Path, interrupt: bool) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias",
         "local", "--port", str(port), "--n_ctx", "4096",
         "--n_threads", str(os.cpu_count()), "--interrupt_requests", str(interrupt)],
        port, "/v1/models", tmp / f"llama_server_{interrupt}.log")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3, help="Tandem/ceiling runs per level")
    args = ap.parse_args()
    from llama_cpp import Llama

    path = resolve("qwen2.5-coder-0.5b-instruct", progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="tandem-conc-"))
    llm = Llama(str(path), n_ctx=64, n_batch=64, verbose=False)

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode(), add_bos=False)) if text else 0

    # Ceiling prompts: the same chat-templated text the servers see.
    template = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful " \
               "assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    prompts = [llm.tokenize(template.format(messages(i)[0]["content"]).encode(),
                            add_bos=False, special=True) for i in range(max(LEVELS))]
    raw_alone = [ceiling(llm, [p], args.max_tokens)[1][0] for p in prompts]
    raw_same: dict[int, bool] = {}

    table: dict[tuple[str, int], dict] = {}
    alone: dict[int, str] = {}
    together: dict[int, str] = {}
    gw = start_gateway({"models": {"local": {"backend": "llama_cpp", "model": str(path),
                                             "n_ctx": 4096, "parallel": 8}},
                        "routing": {"default": "local"}}, tmp)
    anchor = start_llama_cpp_server_bin(path, tmp)
    try:
        asyncio.run(level(gw.url, "local", 1, 4))  # warm-up
        asyncio.run(level(anchor.url, "local", 1, 4))
        for i in range(max(LEVELS)):  # each prompt alone: the reference outputs
            alone[i] = level_one(gw.url, i, args.max_tokens)
        for c in LEVELS:
            # Tandem, llama-server and the ceiling take turns: machine drift hits all alike.
            runs, ceil_runs, anchor_runs = [], [], []
            for _ in range(args.reps):
                time.sleep(1.0)  # let the other side's worker threads go idle
                results = asyncio.run(level(gw.url, "local", c, args.max_tokens))
                runs.append(summarise(results, count))
                time.sleep(1.0)
                anchor_runs.append(summarise(
                    asyncio.run(level(anchor.url, "local", c, args.max_tokens)), count))
                time.sleep(1.0)
                rate, outs = ceiling(llm, prompts[:c], args.max_tokens)
                ceil_runs.append(rate)
                raw_same[c] = all(outs[i] == raw_alone[i] for i in range(c))
                if c == max(LEVELS):
                    together = {i: r["text"] for i, r in enumerate(results)}
            table[("ceiling (raw batch loop)", c)] = {
                "agg": float(np.median(ceil_runs)), "ttft_p50": float("nan"),
                "ttft_max": float("nan"), "dropped": 0}
            for name, rs in (("tandem", runs), (ANCHOR, anchor_runs)):
                table[(name, c)] = dict(sorted(rs, key=lambda r: r["agg"])[len(rs) // 2])
                table[(name, c)]["dropped"] = max(r["dropped"] for r in rs)
                table[(name, c)]["ttft_max"] = max(r["ttft_max"] for r in rs)
                table[(name, c)]["aggs"] = [r["agg"] for r in rs]
    finally:
        gw.stop()
        anchor.stop()
    for interrupt in (False, True):
        name = f"llama_cpp.server interrupt={'on' if interrupt else 'off'}"
        server = start_llama_server(path, tmp, interrupt)
        try:
            asyncio.run(level(server.url, "local", 1, 4))
            for c in LEVELS:
                table[(name, c)] = summarise(
                    asyncio.run(level(server.url, "local", c, args.max_tokens)), count)
        finally:
            server.stop()

    names = ["tandem", ANCHOR, "llama_cpp.server interrupt=off",
             "llama_cpp.server interrupt=on", "ceiling (raw batch loop)"]
    rows = []
    for name in names:
        one = table[(name, 1)]["agg"]
        for c in LEVELS:
            r = table[(name, c)]
            rows.append([name, c, r["agg"], r["agg"] / one, r["ttft_p50"], r["ttft_max"],
                         r["dropped"]])
    print(f"local_concurrency: {machine()}; Qwen2.5-Coder-0.5B Q4_K_M, greedy, "
          f"{args.max_tokens} tokens per stream")
    print_table(["path", "streams", "agg tok/s", "speedup", "ttft p50 s", "ttft max s",
                 "dropped"], rows)
    identical = all(together[i] == alone[i] for i in together)
    print(f"each of {len(together)} concurrent outputs identical to running it alone: "
          f"{identical}")
    print("the raw batch loop itself, batched vs alone, identical at "
          + ", ".join(f"{c} streams: {raw_same[c]}" for c in LEVELS))
    t = {c: table[("tandem", c)]["agg"] for c in LEVELS}
    ls = {c: table[(ANCHOR, c)]["agg"] for c in LEVELS}
    print("tandem / llama-server aggregate, per rep: " + "; ".join(
        f"{c} streams " + ", ".join(f"{a / b:.2f}" for a, b in zip(
            table[("tandem", c)]["aggs"], table[(ANCHOR, c)]["aggs"])) for c in LEVELS))
    ceil = {c: table[("ceiling (raw batch loop)", c)]["agg"] for c in LEVELS}
    emit_json({
        "bench": "local_concurrency",
        "speedup_4": round(t[4] / t[1], 3), "speedup_8": round(t[8] / t[1], 3),
        "ceiling_speedup_4": round(ceil[4] / ceil[1], 3),
        "ceiling_speedup_8": round(ceil[8] / ceil[1], 3),
        "tandem_agg_4": round(t[4], 1), "tandem_agg_8": round(t[8], 1),
        "llama_server_agg_1": round(ls[1], 1), "llama_server_agg_4": round(ls[4], 1),
        "llama_server_agg_8": round(ls[8], 1), "tandem_agg_1": round(t[1], 1),
        "ratio_to_llama_server_4": round(t[4] / ls[4], 3),
        "ratio_to_llama_server_8": round(t[8] / ls[8], 3),
        "llama_server_worst_ttft_4_s": round(table[(ANCHOR, 4)]["ttft_max"], 3),
        "llama_server_worst_ttft_8_s": round(table[(ANCHOR, 8)]["ttft_max"], 3),
        "worst_ttft_8_s": round(table[("tandem", 8)]["ttft_max"], 3),
        "ceiling_agg_4": round(ceil[4], 1), "ceiling_agg_8": round(ceil[8], 1),
        "ratio_to_ceiling_4": round(t[4] / ceil[4], 3),
        "ratio_to_ceiling_8": round(t[8] / ceil[8], 3),
        "worst_ttft_4_s": round(table[("tandem", 4)]["ttft_max"], 3),
        "dropped": sum(table[("tandem", c)]["dropped"] for c in LEVELS),
        "llama_cpp_server_dropped_default": sum(
            table[("llama_cpp.server interrupt=on", c)]["dropped"] for c in LEVELS),
        "llama_cpp_server_agg_4_interrupt_off": round(
            table[("llama_cpp.server interrupt=off", 4)]["agg"], 1),
        "identical_outputs": identical,
        "raw_loop_identical_4": raw_same[4], "raw_loop_identical_8": raw_same[8],
    })


async def level_one_async(url: str, i: int, max_tokens: int) -> str:
    async with httpx.AsyncClient(timeout=600) as http:
        r = await stream_one(http, url, "local", i, max_tokens, time.perf_counter())
    return r["text"]


def level_one(url: str, i: int, max_tokens: int) -> str:
    return asyncio.run(level_one_async(url, i, max_tokens))


if __name__ == "__main__":
    main()
