"""Why batch layout matters on llama.cpp's per-slot KV streams (issue 17).

The raw batch API, no gateway: ms per ``llama_decode`` step while N sequences decode one
token each, for batches laid out in slot order or not, in adjacent slots or scattered,
with one KV stream per slot (Tandem's engine, llama-server ``-np N``) and with a unified
cache. With ``--cached-cells K`` the unified cache also holds K cells of idle slots
(the cost that keeps the engine on per-slot streams).

    .venv/bin/python bench/batch_layout.py [--reps 2] [--steps 32] [--cached-cells 16000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import emit_json, machine, print_table  # noqa: I001

from clients.llama_cpp import internals as I
from clients.model_store import resolve

TOPICS = ["rivers", "volcanoes", "the printing press", "bees", "glaciers", "compilers",
          "the moon", "bridges"]
# name: (slot of prompt i, batch order of the prompts)
CASES = {
    "8 streams, slot order": (list(range(8)), list(range(8))),
    "8 streams, order 3,0,5,1,7,2,6,4": (list(range(8)), [3, 0, 5, 1, 7, 2, 6, 4]),
    "4 streams in slots 0-3, slot order": ([0, 1, 2, 3], [0, 1, 2, 3]),
    "4 streams in slots 0-3, order 2,0,3,1": ([0, 1, 2, 3], [2, 0, 3, 1]),
    "4 streams in slots 0,2,5,7, slot order": ([0, 2, 5, 7], [0, 1, 2, 3]),
}


def context(llm, unified: bool):
    params = I.context_params(4096 * 8, 8, 512, 2)
    params.kv_unified = unified
    return I.open_context(llm, params, 512, 8)


def step_ms(llm, ctx, batch, prompts, slots, order, steps: int) -> float:
    n_vocab = llm.n_vocab()
    for i in order:
        I.truncate_sequence(ctx, slots[i], 0)
    I.batch_clear(batch)
    last = {}
    for i in order:
        for j, t in enumerate(prompts[i]):
            last[i] = I.batch_add(batch, t, j, slots[i], j == len(prompts[i]) - 1)
    ctx.decode(batch)
    toks = {i: int(I.logits_row(ctx, last[i], n_vocab).argmax()) for i in order}
    pos = {i: len(prompts[i]) for i in order}
    times = []
    for _ in range(steps):
        I.batch_clear(batch)
        idx = {}
        for i in order:
            idx[i] = I.batch_add(batch, toks[i], pos[i], slots[i], True)
            pos[i] += 1
        t0 = time.perf_counter()
        ctx.decode(batch)
        times.append(time.perf_counter() - t0)
        toks = {i: int(I.logits_row(ctx, idx[i], n_vocab).argmax()) for i in idx}
    return statistics.median(times) * 1000


def fill_idle(llm, ctx, batch, cells: int) -> None:
    """``cells`` cached tokens in slots 4-7 (idle while the 4-stream case runs)."""
    text = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 600)
    per = min(4000, cells // 4)
    for slot in range(4, 8):
        I.truncate_sequence(ctx, slot, 0)
        for lo in range(0, per, 512):
            I.batch_clear(batch)
            for j in range(lo, min(lo + 512, per)):
                I.batch_add(batch, text[j], j, slot, False)
            ctx.decode(batch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--cached-cells", type=int, default=0)
    args = ap.parse_args()
    from llama_cpp import Llama

    llm = Llama(model_path=str(resolve("qwen2.5-coder-0.5b-instruct")), n_ctx=64,
                n_batch=64, n_threads=2, verbose=False)
    prompts = [llm.tokenize(f"<|im_start|>user\nWrite a detailed essay about {t}."
                            "<|im_end|>\n<|im_start|>assistant\n".encode(), special=True)
               for t in TOPICS]
    ctxs = {u: context(llm, u) for u in (False, True)}
    res: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.reps):  # interleaved: drift hits every case alike
        for name, (slots, order) in CASES.items():
            for unified, (ctx, batch) in ctxs.items():
                res.setdefault((name, unified), []).append(
                    step_ms(llm, ctx, batch, prompts, dict(enumerate(slots)), order,
                            args.steps))
    rows = [[name, " / ".join(f"{v:.1f}" for v in res[(name, False)]),
             " / ".join(f"{v:.1f}" for v in res[(name, True)])] for name in CASES]
    cached = {}
    if args.cached_cells:
        ctx, batch = ctxs[True]
        slots, order = CASES["4 streams in slots 0-3, slot order"]
        empty = step_ms(llm, ctx, batch, prompts, dict(enumerate(slots)), order, args.steps)
        fill_idle(llm, ctx, batch, args.cached_cells)
        full = step_ms(llm, ctx, batch, prompts, dict(enumerate(slots)), order, args.steps)
        cached = {"unified_4_empty_ms": round(empty, 1), "unified_4_cached_ms": round(full, 1)}
        rows.append([f"4 streams, slots 0-3, {args.cached_cells} cells cached in 4-7",
                     "-", f"{empty:.1f} -> {full:.1f}"])
    print(f"batch_layout: {machine()}; Qwen2.5-Coder-0.5B Q4_K_M; ms per decode step, "
          f"median of {args.steps} steps, per rep")
    print_table(["case", "per-slot KV streams", "unified KV"], rows)
    emit_json({"bench": "batch_layout", **cached, **{
        f"{'unified' if u else 'per_slot'}:{name}": round(statistics.median(v), 1)
        for (name, u), v in res.items()}})


if __name__ == "__main__":
    main()
