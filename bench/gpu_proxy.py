"""Proxy-tuning on one GPU: base alone and the reference-style three-model loop (eager
transformers, dynamic caches) beside Tandem's engine (CUDA graphs, plain and
speculative), on random bf16 weights of real shapes: a Llama-2-7B-shaped base and two
TinyLlama-1.1B-shaped expert and anti-expert. Also the floor: every weight read once
per token at the device-copy bandwidth measured in the same run.

The random weights carry successor rules (clients/gpu/reference.py ``structure_``) so
that greedy outputs can be compared across implementations (the top logit leads by
units) and a speculative draft means something: the expert differs from the anti-expert
on ``--tuned`` of the tokens (the fused model follows the expert there) and the base
has its own prediction on ``--base-only`` of them (an expert draft is rejected there).
Speed of the plain paths does not depend on the weights' values.

    python3 bench/gpu_proxy.py [--tokens 128] [--base-only 0.2] [--compile]
"""

from __future__ import annotations

import argparse
import datetime
import time

from common import emit_json, print_table  # noqa: I001

import torch

from clients.gpu.engine import ProxyEngine
from clients.gpu.llama import LlamaStack, compiled_kernels, read_shape
from clients.gpu.reference import (LLAMA2_7B, TINYLLAMA, random_llama,
                                   reference_proxy_generate, structure_, successor_rules)
from clients.gpu.speculation import DraftLength

PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889]


DEV = "cuda"
SMALL = (dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4),
         dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2))


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def sync_time(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy, counting bytes read and written."""
    a = torch.empty(1 << 31 if DEV == "cuda" else 1 << 24, dtype=torch.uint8, device=DEV)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    _, t = sync_time(lambda: [b.copy_(a) for _ in range(10)])
    return 2 * a.numel() * 10 / t


def prompts(batch: int) -> list[list[int]]:
    return [[PROMPT[0]] + [(t + 97 * i) % 32000 for t in PROMPT[1:]] for i in range(batch)]


def per_token(run, steps: int) -> float:
    """Seconds per decode step: (time of ``steps`` - time of 1) / (steps - 1)."""
    run(2)  # warm-up
    _, t1 = sync_time(lambda: run(1))
    out, tn = sync_time(lambda: run(steps))
    return (tn - t1) / (steps - 1), out


def tandem_plain(engine: ProxyEngine, ps, steps: int):
    outs = [[engine.prefill(i, p)] for i, p in enumerate(ps)]
    for _ in range(steps - 1):
        for o, t in zip(outs, engine.step(len(ps), int(engine.pos[:len(ps)].max()), True)):
            o.append(t)
    return outs


def tandem_spec(engine: ProxyEngine, chooser: DraftLength, ps, steps: int, stats=None):
    n = len(ps)
    outs = [[engine.prefill(i, p)] for i, p in enumerate(ps)]
    while min(len(o) for o in outs) < steps:
        k = chooser.choose(room=steps - min(len(o) for o in outs))
        max_pos = int(engine.pos[:n].max())
        if k == 0:
            for o, t in zip(outs, engine.step(n, max_pos, True)):
                o.append(t)
            continue
        rows = engine.spec_step(n, max_pos, True, k)
        chooser.observe(k, [len(r) for r in rows])
        if stats is not None:
            stats.append((k, [len(r) for r in rows]))
        for o, r in zip(outs, rows):
            o.extend(r)
    return [o[:steps] for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--tuned", type=float, default=0.3)
    ap.add_argument("--base-only", type=float, default=0.2)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, CPU if no GPU")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile(mode='reduce-overhead') of the step")
    args = ap.parse_args()
    n = args.tokens
    global DEV
    DEV = "cuda" if torch.cuda.is_available() else "cpu"
    big, small = SMALL if args.smoke else (LLAMA2_7B, TINYLLAMA)
    dev = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    print(f"# {dev}, torch {torch.__version__}, {datetime.date.today()}")
    bw = copy_bandwidth()
    print(f"# device copy bandwidth {bw / 1e12:.2f} TB/s (read + write)")

    hf = [random_llama(big, 1, DEV, torch.bfloat16),
          random_llama(small, 2, DEV, torch.bfloat16),
          random_llama(small, 3, DEV, torch.bfloat16)]
    rules = successor_rules(32000, 7, args.tuned, args.base_only, DEV)
    for m, (succ, strength) in zip((hf[2], hf[1], hf[0]), rules):
        structure_(m, succ, strength)
    base = LlamaStack(read_shape(hf[0].config.to_dict()), [hf[0].state_dict()], DEV)
    pair = LlamaStack(read_shape(hf[1].config.to_dict()),
                      [hf[1].state_dict(), hf[2].state_dict()], DEV)
    floor_ms = (base.weight_bytes + pair.weight_bytes) / bw * 1e3
    base_floor_ms = base.weight_bytes / bw * 1e3
    rows, fig = [], {"gpu": dev}

    # Eager transformers: the base alone, then the reference three-model loop.
    t_base, _ = per_token(lambda s: reference_proxy_generate(hf[0], None, None, prompts(1), s),
                          n)
    t_ref, ref_tokens = per_token(lambda s: reference_proxy_generate(*hf, prompts(1), s), n)
    rows.append(["base alone, eager", 1, t_base * 1e3, 1 / t_base, "reference loop"])
    ids = torch.tensor(prompts(1), device=DEV)

    def generate(s):
        return hf[0].generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=s,
                              min_new_tokens=s, do_sample=False, pad_token_id=0)
    t_gen, _ = per_token(generate, n)
    rows.append(["base alone, eager", 1, t_gen * 1e3, 1 / t_gen, "generate()"])
    fig["base_generate_ms"] = t_gen * 1e3
    rows.append(["reference proxy, eager", 1, t_ref * 1e3, 1 / t_ref, ""])
    for b in (4, 8):
        t, _ = per_token(lambda s: reference_proxy_generate(*hf, prompts(b), s), n // 2)
        rows.append(["reference proxy, eager", b, t * 1e3, b / t, ""])
        fig[f"ref_tok_s_b{b}"] = b / t

    variants = {"graphs, eager kernels": dict(kernels=None)}
    if DEV == "cuda":
        variants.update({
            "graphs, compiled kernels": dict(kernels=compiled_kernels()),
            "graphs, compiled, one stream": dict(kernels=compiled_kernels(), streams=False)})
    best, best_t, tandem_tokens = None, float("inf"), None
    for name, kw in variants.items():
        engine = ProxyEngine(base, pair, 1.0, slots=8, capacity=1024, **kw)
        t, toks = per_token(lambda s: tandem_plain(engine, prompts(1), s), n)
        rows.append([f"tandem proxy, {name}", 1, t * 1e3, 1 / t, ""])
        if t < best_t:
            best, best_t, tandem_tokens = name, t, toks
        del engine
        torch.cuda.empty_cache()
    if args.compile:
        try:
            t = compile_variant(base, pair, n)
            rows.append(["tandem proxy, torch.compile reduce-overhead", 1, t * 1e3, 1 / t, ""])
            fig["compile_ms"] = t * 1e3
        except Exception as err:  # reported, not fatal: the graphs path is the product
            rows.append(["tandem proxy, torch.compile reduce-overhead", 1, "", "",
                         f"failed: {type(err).__name__}: {str(err)[:80]}"])
        torch.cuda.empty_cache()
    engine = ProxyEngine(base, pair, 1.0, slots=8, capacity=1024, **variants[best])
    for b in (4, 8):
        t, _ = per_token(lambda s: tandem_plain(engine, prompts(b), s), n)
        rows.append([f"tandem proxy ({best})", b, t * 1e3, b / t, ""])
        fig[f"tandem_tok_s_b{b}"] = b / t

    spec_ms, spec_tokens = None, None
    for b in (1, 4, 8):
        stats: list = []
        for k in range(1, 9):  # capture every graph the run may use before timing it
            tandem_plain(engine, prompts(b), 2)
            engine.spec_step(b, len(PROMPT) + 1, True, k)
        _, t_prefill = sync_time(lambda: tandem_plain(engine, prompts(b), 1))
        chooser = DraftLength(base.weight_bytes, pair.weight_bytes)
        toks, t = sync_time(lambda: tandem_spec(engine, chooser, prompts(b), n, stats))
        t -= t_prefill
        drafted = sum(k * len(e) for k, e in stats)
        kept = sum(x - 1 for _, e in stats for x in e)
        ms = t / (n - 1) * 1e3
        ks = sorted({k for k, _ in stats})
        rows.append(["tandem speculative", b, ms, b * (n - 1) / t,
                     f"acceptance {kept / max(drafted, 1):.2f}, k in {ks}"])
        fig[f"spec_tok_s_b{b}"] = b * (n - 1) / t
        if b == 1:
            spec_ms, spec_tokens = ms, toks
            fig["acceptance_b1"] = kept / max(drafted, 1)
    identical = tandem_tokens == ref_tokens and spec_tokens == ref_tokens
    print_table(["what", "batch", "ms/step", "tokens/s", "note"], rows)
    print(f"# floor: {floor_ms:.2f} ms/token for the three models' weights "
          f"({(base.weight_bytes + pair.weight_bytes) / 1e9:.1f} GB), {base_floor_ms:.2f} "
          "for the base alone")
    print(f"# best plain variant: {best}; greedy tokens identical to the reference: "
          f"{tandem_tokens == ref_tokens}, speculative identical: {spec_tokens == ref_tokens}")
    fig.update(ref_ms=t_ref * 1e3, base_ms=t_base * 1e3, tandem_ms=best_t * 1e3,
               spec_ms=spec_ms, floor_ms=floor_ms, identical=identical,
               speedup=t_ref / best_t, tokens=n, base_only=args.base_only, tuned=args.tuned)
    emit_json(fig)


def compile_variant(base, pair, n: int) -> float:
    """The plain step under torch.compile(mode='reduce-overhead') at batch 1 (caches,
    weights and state marked static so that cudagraph trees do not copy them)."""
    engine = ProxyEngine(base, pair, 1.0, slots=1, capacity=1024, graphs=False)
    for t in [engine.pending, engine.pos, engine.temp, engine.top_p, engine.seed,
              engine.last_fused, *base._all_weights(), *pair._all_weights()]:
        torch._dynamo.mark_static_address(t)
    for k, v in engine.base_cache + engine.pair_cache:
        torch._dynamo.mark_static_address(k)
        torch._dynamo.mark_static_address(v)
    span = engine.span_for(len(PROMPT) + n + 1)
    step = torch.compile(lambda: engine._plain(1, span, True), mode="reduce-overhead")

    def run(steps):
        engine.prefill(0, PROMPT)
        with torch.inference_mode():
            for _ in range(steps - 1):
                step().tolist()
    t, _ = per_token(run, n)
    return t


if __name__ == "__main__":
    main()
