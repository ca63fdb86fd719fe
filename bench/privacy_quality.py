"""Answer quality and leaks of the privacy modes on personalised tasks (CoGenesis-style).

Tasks: bench/data/privacy_tasks.jsonl (32: a private profile, an instruction, the facts
a good answer uses, a format check). Setups, each answering every task:

- ``upper``: the stand-in cloud given the full private context (upper bound; only ever
  against the local stand-in cloud, called directly, never through the gateway);
- ``cloud_blind``: the stand-in cloud without the context;
- ``local``, ``sketch``, ``redact``: through the gateway with that privacy mode.

The stand-in cloud is a Tandem serving Qwen2.5-Coder-1.5B; the gateway's local model is
Qwen2.5-Coder-0.5B; between the gateway and the cloud sits the recording upstream, and a
leak is a task whose recorded bytes contain any of its private values. Score per answer
= mean of (facts used, format check, judge score / 10), the judge being the stand-in cloud
shown the context, the instruction and the answer. Ratios are each setup's mean score
over ``upper``'s.

    .venv/bin/python bench/privacy_quality.py [--limit 32] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, emit_json, machine, print_table  # noqa: I001

import openai

from clients.model_store import resolve
from tests.support.recording_upstream import RecordingUpstream
from tests.support.servers import ServerProcess, free_port, start_gateway

TASKS = ROOT / "bench" / "data" / "privacy_tasks.jsonl"
JUDGE = ("You grade an assistant's answer. The user's private profile: {context}\n"
         "The user's request: {instruction}\nThe answer: {answer}\n\nDoes the answer fulfil "
         "the request and correctly use the relevant facts of the profile? Reply with one "
         "integer from 1 (useless) to 10 (excellent) and nothing else.")


def format_ok(answer: str, check: dict) -> float:
    words = len(answer.split())
    if "max_words" in check and not 0 < words <= check["max_words"]:
        return 0.0
    if "min_items" in check:
        items = re.findall(r"(?m)^\s*(?:[-*•]|\d+[.)])\s+\S", answer)
        return 1.0 if len(items) >= check["min_items"] else 0.0
    return 1.0 if words else 0.0


def facts_used(answer: str, facts: list[str]) -> float:
    low = answer.lower()
    return sum(f.lower() in low for f in facts) / len(facts)


def judge(cloud: openai.OpenAI, model: str, task: dict, answer: str) -> float:
    r = cloud.chat.completions.create(model=model, temperature=0, max_tokens=4, messages=[
        {"role": "user", "content": JUDGE.format(answer=answer or "(empty)", **task)}])
    m = re.search(r"\d+", r.choices[0].message.content or "")
    return min(10, max(1, int(m.group()))) / 10 if m else 0.1


class Stopped(Exception):
    pass


def _stop(*_) -> None:
    raise Stopped


def start_cloud(tmp: Path) -> ServerProcess:
    port = free_port()
    cfg = ROOT / "server" / "configs" / "cloud_standin.yaml"
    return ServerProcess([sys.executable, "-m", "server.cli", "serve", "--config", str(cfg),
                          "--port", str(port), "--log-level", "warning"],
                         port, "/ready", tmp / "cloud.log", timeout_s=600)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _stop)  # SIGTERM/Ctrl-C: summarise the finished tasks
    tasks = [json.loads(line) for line in TASKS.read_text().splitlines() if line.strip()]
    tasks.sort(key=lambda t: (t["id"].split("-")[1], t["id"]))  # every template early
    tasks = tasks[: args.limit] if args.limit else tasks
    local_path = resolve("qwen2.5-coder-0.5b-instruct", progress=False)
    resolve("qwen2.5-coder-1.5b-instruct", progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="privacy-bench-"))
    cloud = start_cloud(tmp)
    recording = RecordingUpstream(cloud.url).start()
    gw = start_gateway({
        "models": {"local": {"backend": "llama_cpp", "model": str(local_path), "n_ctx": 4096},
                   "cloud": {"backend": "openai", "base_url": recording.url,
                             "model": "qwen2.5-coder-1.5b-instruct", "read_timeout_s": 600,
                             "max_retries": 0}},
        "routing": {"default": "cloud"},
        "privacy": {"sketch_max_tokens": args.max_tokens},
    }, tmp, name="privacy-bench", ready_path="/ready")
    cloud_sdk = openai.OpenAI(base_url=cloud.url + "/v1", api_key="x", timeout=900)
    gw_sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", timeout=900)
    cloud_model = "qwen2.5-coder-1.5b-instruct"
    setups = ("upper", "cloud_blind", "local", "sketch", "redact")
    scores: dict[str, list[tuple[float, float, float]]] = {s: [] for s in setups}
    leaks = errors = 0
    seconds: dict[str, float] = {s: 0.0 for s in setups}

    def ask(setup: str, task: dict, user: dict, max_tokens: int) -> tuple[str, int]:
        common = dict(temperature=0, max_tokens=max_tokens)
        leaked = 0
        if setup == "upper":
            r = cloud_sdk.chat.completions.create(model=cloud_model, messages=[
                {"role": "system", "content": "About the user: " + task["context"]}, user],
                **common)
        elif setup == "cloud_blind":
            r = cloud_sdk.chat.completions.create(model=cloud_model, messages=[user], **common)
        else:
            before = len(recording.received)
            r = gw_sdk.chat.completions.create(
                model="tandem", messages=[user], **common,
                extra_body={"private_context": task["context"],
                            "privacy": "local_only" if setup == "local" else setup})
            sent = b"\n".join(recording.received[before:]).decode("utf-8", "replace").lower()
            leaked = int(any(v.lower() in sent for v in task["private"]))
        return r.choices[0].message.content or "", leaked

    started = time.perf_counter()
    try:
        for task in tasks:
            done = len(scores["redact"])
            user = {"role": "user", "content": task["instruction"]}
            for setup in setups:
                t0 = time.perf_counter()
                try:
                    answer, leaked = ask(setup, task, user, args.max_tokens)
                except openai.APIError as err:  # counted, not hidden: the score is 0
                    print(f"{task['id']} {setup}: {type(err).__name__}: {err}", flush=True)
                    errors += 1
                    scores[setup].append((0.0, 0.0, 0.0))
                    continue
                leaks += leaked
                seconds[setup] += time.perf_counter() - t0
                scores[setup].append((facts_used(answer, task["facts"]),
                                      format_ok(answer, task["check"]),
                                      judge(cloud_sdk, cloud_model, task, answer)))
            print(f"{task['id']} ({time.perf_counter() - started:.0f} s): " + ", ".join(
                f"{s}={sum(scores[s][-1]) / 3:.2f}" for s in setups), flush=True)
    except (Stopped, KeyboardInterrupt):
        print(f"stopped: summarising the {done} finished tasks", flush=True)
        scores = {s: v[:done] for s, v in scores.items()}
        tasks = tasks[:done]
    finally:
        gw.stop()
        recording.stop()
        cloud.stop()
    mean = {s: sum(sum(x) / 3 for x in v) / len(v) for s, v in scores.items()}
    rows = [[s, len(v), sum(x[0] for x in v) / len(v), sum(x[1] for x in v) / len(v),
             sum(x[2] for x in v) / len(v), mean[s], mean[s] / mean["upper"],
             seconds[s] / len(v)] for s, v in scores.items()]
    print(f"\n{len(tasks)} tasks, max_tokens {args.max_tokens}; {machine()}")
    print_table(["setup", "n", "facts", "format", "judge", "score", "ratio", "s/task"], rows)
    print(f"leaks (tasks whose private values reached the cloud): {leaks}; errors: {errors}")
    emit_json({"tasks": len(tasks), "leaks": leaks, "errors": errors,
               "upper_score": round(mean["upper"], 4),
               "sketch_ratio": round(mean["sketch"] / mean["upper"], 4),
               "redact_ratio": round(mean["redact"] / mean["upper"], 4),
               "local_ratio": round(mean["local"] / mean["upper"], 4),
               "cloud_blind_ratio": round(mean["cloud_blind"] / mean["upper"], 4)})


if __name__ == "__main__":
    main()
