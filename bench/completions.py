"""What prompt logprobs cost in Tandem's batch engine, beside the plain prefill that chat
runs and beside llama-cpp-python's own way (``Llama(logits_all=True)``), same model, same
prompt length, same run; reps interleave the three so that drift hits all of them.

- chat prefill: the engine with logits for the last prompt token only, one greedy token;
- prompt scoring: the same prompt with logits at every position, each row reduced in the
  engine thread to the token's log-probability, rank and top-k (what ``/v1/completions``
  does for ``prompt_logprobs: k`` or ``echo`` + ``logprobs: k``), no token sampled;
- logits_all: llama-cpp-python evaluates the prompt keeping every row, then numpy takes
  the log-softmax and the top-k of all rows at once;
- tail scoring: what a speculative verifier sends next: the context it sent before (now
  in the prefix cache) plus 4 drafted tokens, scored with ``prompt_logprobs_from`` (only
  the new positions run), against scoring the whole prompt again as vLLM's API implies.

Every prompt is distinct (a numbered first line), so no run reuses another's KV cache.

    .venv/bin/python bench/completions.py [--tokens 256] [--k 5] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import threading
import time

from common import emit_json, machine, print_table  # noqa: I001  (bench/ is on sys.path)

import numpy as np
from llama_cpp import Llama

from clients.completions import score_row
from clients.llama_cpp.batch_engine import BatchEngine, Sequence
from clients.llama_cpp.decoding import SamplingParams
from clients.model_store import resolve

CODE = ("def merge_sort(items):\n    if len(items) <= 1:\n        return items\n"
        "    mid = len(items) // 2\n    left = merge_sort(items[:mid])\n"
        "    right = merge_sort(items[mid:])\n    return merge(left, right)\n\n")


def prompt(llm: Llama, tag: str, n_tokens: int) -> list[int]:
    tokens = llm.tokenize(f"# {tag}\n".encode(), add_bos=True, special=True)
    body = llm.tokenize(CODE.encode() * 64, add_bos=False, special=False)
    return (tokens + body)[:n_tokens]


def run(engine: BatchEngine, seq: Sequence) -> float:
    events: queue.Queue = queue.Queue()
    seq.emit, seq.cancel = events.put, threading.Event()
    t0 = time.perf_counter()
    engine.submit(seq)
    while (event := events.get(timeout=600))[0] != "finish":
        assert event[0] != "error", event
    return time.perf_counter() - t0


def logits_all(ref: Llama, tokens: list[int], k: int) -> float:
    t0 = time.perf_counter()
    ref.reset()
    ref.eval(tokens)
    x = np.asarray(ref.scores[: len(tokens) - 1], dtype=np.float32)
    m = x.max(axis=1, keepdims=True)
    lp = x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))
    top = np.argpartition(-lp, k - 1, axis=1)[:, :k]
    np.take_along_axis(lp, top, axis=1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    path = str(resolve("qwen2.5-coder-0.5b-instruct", progress=False))
    llm = Llama(path, n_ctx=64, n_batch=64, n_threads=threads, verbose=False)
    ref = Llama(path, logits_all=True, n_ctx=args.tokens + 8, n_batch=512,
                n_threads=threads, verbose=False)
    engine = BatchEngine(llm, n_ctx=args.tokens + 64, parallel=2, n_batch=512,
                         n_threads=threads, name="bench")
    times: dict[str, list[float]] = {"chat prefill": [], "prompt scoring": [], "logits_all": [],
                                     "tail scoring (4 new)": []}
    try:
        run(engine, Sequence(prompt(llm, "warm-up", args.tokens),  # first-touch costs
                             SamplingParams(max_tokens=1, temperature=0), None, None))
        for rep in range(args.reps):
            p = prompt(llm, f"chat {rep}", args.tokens)
            times["chat prefill"].append(run(engine, Sequence(
                p, SamplingParams(max_tokens=1, temperature=0), None, None)))
            p = prompt(llm, f"scored {rep}", args.tokens)
            times["prompt scoring"].append(run(engine, Sequence(
                p, SamplingParams(max_tokens=0, temperature=0), None, None,
                prompt_logits=lambda pos, row, p=p: score_row(row, p[pos + 1], args.k))))
            times["logits_all"].append(logits_all(ref, prompt(llm, f"ref {rep}", args.tokens),
                                                  args.k))
            p = prompt(llm, f"tail {rep}", args.tokens)
            run(engine, Sequence(p[:-4], SamplingParams(max_tokens=1, temperature=0), None,
                                 None))  # the verifier's previous call, now cached
            times["tail scoring (4 new)"].append(run(engine, Sequence(
                p, SamplingParams(max_tokens=0, temperature=0), None, None,
                prompt_logits=lambda pos, row, p=p: score_row(row, p[pos + 1], args.k),
                score_from=len(p) - 5)))
    finally:
        engine.close()
    med = {name: statistics.median(v) * 1000 for name, v in times.items()}
    print(f"{machine()}; Qwen2.5-Coder-0.5B Q4_K_M, {args.tokens}-token prompt, k={args.k}, "
          f"median of {args.reps}")
    print_table(["path", "ms", "ms / prompt token"],
                [[name, ms, ms / args.tokens] for name, ms in med.items()])
    emit_json({"prompt_tokens": args.tokens, "k": args.k,
               "chat_prefill_ms": round(med["chat prefill"], 2),
               "prompt_scoring_ms": round(med["prompt scoring"], 2),
               "logits_all_ms": round(med["logits_all"], 2),
               "scoring_overhead_ms_per_token": round(
                   (med["prompt scoring"] - med["chat prefill"]) / args.tokens, 3),
               "scoring_vs_logits_all": round(med["prompt scoring"] / med["logits_all"], 3),
               "tail_scoring_ms": round(med["tail scoring (4 new)"], 2)})


if __name__ == "__main__":
    main()
