"""Tokens/s of one local stream through Tandem vs llama-cpp-python called directly.

Same model (Qwen2.5-Coder-0.5B Q4_K_M), same prompt, greedy, same run; runs alternate
(direct, Tandem, direct, …) so that drift hits both sides. Decode rate = tokens after
the first / time from first to last token; both texts are tokenized by the same model.

    .venv/bin/python bench/local_stream.py [--max-tokens 256] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import emit_json, machine, print_table  # noqa: I001  (bench/ is on sys.path)

import httpx
import orjson

from clients.model_store import resolve
from tests.support.servers import start_gateway

MESSAGES = [{"role": "user", "content": "Write a long, detailed essay about the history of "
                                        "computing, with many paragraphs."}]


def timed(pieces, t0: float) -> tuple[str, float, float, float]:
    """Consume content pieces: (text, time to first piece, first and last piece times)."""
    first = last = None
    parts = []
    for piece in pieces:
        now = time.perf_counter()
        first = first or now
        last = now
        parts.append(piece)
    return "".join(parts), first - t0, first, last


def run_direct(llm, max_tokens: int) -> tuple[str, float, float, float]:
    t0 = time.perf_counter()
    chunks = llm.create_chat_completion(messages=MESSAGES, max_tokens=max_tokens,
                                        temperature=0, stream=True)
    return timed((p for c in chunks if (p := c["choices"][0]["delta"].get("content"))), t0)


def _sse_pieces(lines):
    for line in lines:
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = orjson.loads(line[6:])
        if chunk["choices"] and (piece := chunk["choices"][0]["delta"].get("content")):
            yield piece


def run_tandem(url: str, max_tokens: int) -> tuple[str, float, float, float]:
    body = {"model": "local", "messages": MESSAGES, "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    with httpx.Client(timeout=600) as http:
        t0 = time.perf_counter()
        with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
            return timed(_sse_pieces(r.iter_lines()), t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    from llama_cpp import Llama

    path = resolve("qwen2.5-coder-0.5b-instruct", progress=False)
    threads = os.cpu_count()
    llm = Llama(str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    tmp = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    gw = start_gateway({"models": {"local": {"backend": "llama_cpp", "model": str(path),
                                             "n_ctx": 4096}},
                        "routing": {"default": "local"}}, tmp)
    try:
        run_tandem(gw.url, 8)  # warm both sides
        run_direct(llm, 8)
        results = {"direct": [], "tandem": []}
        texts = {}
        for _ in range(args.reps):
            for side, fn in (("direct", lambda: run_direct(llm, args.max_tokens)),
                             ("tandem", lambda: run_tandem(gw.url, args.max_tokens))):
                text, ttft, first, last = fn()
                n = len(llm.tokenize(text.encode(), add_bos=False))
                results[side].append(((n - 1) / (last - first), ttft, n))
                texts[side] = text
    finally:
        gw.stop()

    rows = []
    for side in ("direct", "tandem"):
        rates = [r[0] for r in results[side]]
        rows.append([side, statistics.median(rates), min(rates), max(rates),
                     statistics.median(r[1] for r in results[side]) * 1000,
                     results[side][0][2]])
    direct = statistics.median(r[0] for r in results["direct"])
    tandem = statistics.median(r[0] for r in results["tandem"])
    print(f"local_stream: {machine()}; max_tokens={args.max_tokens}, reps={args.reps}")
    print_table(["path", "tok/s median", "min", "max", "ttft ms", "tokens"], rows)
    print(f"same text on both paths: {texts['direct'] == texts['tandem']}")
    emit_json({"bench": "local_stream", "tokens_per_s": round(tandem, 2),
               "direct_tokens_per_s": round(direct, 2),
               "ratio_to_direct": round(tandem / direct, 4),
               "identical_text": texts["direct"] == texts["tandem"]})


if __name__ == "__main__":
    main()
