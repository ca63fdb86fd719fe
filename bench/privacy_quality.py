"""Answer quality and leaks of the privacy modes on personalised tasks (CoGenesis-style),
scored by automatic checks only.

Tasks: bench/data/privacy_tasks.jsonl (32: four private profiles × eight requests; each
task lists the profile facts a good answer uses and a format check). Setups, each
answering every task:

- ``cloud_with_context``: the stand-in cloud given the whole profile in the user's
  message (what no private deployment may do; called directly, never through the
  gateway);
- ``cloud_without_context``: the stand-in cloud given the request alone;
- ``local_only``, ``sketch``, ``redact``: through the gateway with that privacy mode.

Score per answer = mean of *facts used* (share of the task's facts in the answer, case-
folded) and *format* (the task's check: word limit, list items). No model judges: the
1.5B stand-in gave the same grade whatever the answer. Reported per setup and per
request template, as absolute scores (not as a share of an upper bound: the stand-in
cloud with the context is weaker than the 0.5B local model at using it, so a ratio to it
says little). A leak is a task whose recorded cloud-bound bytes contain any of its
private values.

The stand-in cloud is a Tandem serving Qwen2.5-Coder-1.5B; the gateway's local model is
Qwen2.5-Coder-0.5B; between the gateway and the cloud sits the recording upstream.

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
    setups = ("cloud_with_context", "cloud_without_context", "local_only", "sketch", "redact")
    scores: dict[str, list[tuple[float, float]]] = {s: [] for s in setups}
    leaks = errors = 0
    seconds: dict[str, float] = {s: 0.0 for s in setups}

    def ask(setup: str, task: dict, user: dict, max_tokens: int) -> tuple[str, int]:
        common = dict(temperature=0, max_tokens=max_tokens)
        leaked = 0
        if setup == "cloud_with_context":
            r = cloud_sdk.chat.completions.create(model=cloud_model, messages=[
                {"role": "user", "content": f"About me: {task['context']}\n\n"
                                            f"{user['content']}"}], **common)
        elif setup == "cloud_without_context":
            r = cloud_sdk.chat.completions.create(model=cloud_model, messages=[user], **common)
        else:
            before = len(recording.received)
            r = gw_sdk.chat.completions.create(
                model="tandem", messages=[user], **common,
                extra_body={"private_context": task["context"], "privacy": setup})
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
                    scores[setup].append((0.0, 0.0))
                    continue
                leaks += leaked
                seconds[setup] += time.perf_counter() - t0
                scores[setup].append((facts_used(answer, task["facts"]),
                                      format_ok(answer, task["check"])))
            print(f"{task['id']} ({time.perf_counter() - started:.0f} s): " + ", ".join(
                f"{s}={sum(scores[s][-1]) / 2:.2f}" for s in setups), flush=True)
    except (Stopped, KeyboardInterrupt):
        print(f"stopped: summarising the {done} finished tasks", flush=True)
        scores = {s: v[:done] for s, v in scores.items()}
        tasks = tasks[:done]
    finally:
        gw.stop()
        recording.stop()
        cloud.stop()
    report(tasks, scores, seconds, leaks, errors, args.max_tokens)


def report(tasks: list[dict], scores: dict[str, list[tuple[float, float]]],
           seconds: dict[str, float], leaks: int, errors: int, max_tokens: int) -> None:
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    score = {s: mean([(f + c) / 2 for f, c in v]) for s, v in scores.items()}
    rows = [[s, len(v), round(mean([x[0] for x in v]), 3), round(mean([x[1] for x in v]), 3),
             round(score[s], 3), round(seconds[s] / max(1, len(v)), 1)]
            for s, v in scores.items()]
    print(f"\n{len(tasks)} tasks, max_tokens {max_tokens}; {machine()}")
    print_table(["setup", "n", "facts used", "format ok", "score", "s/task"], rows)
    templates = sorted({t["id"].split("-")[0] for t in tasks})
    per = []
    for tpl in templates:
        idx = [i for i, t in enumerate(tasks) if t["id"].split("-")[0] == tpl]
        label = next(t["instruction"] for t in tasks if t["id"].startswith(tpl + "-"))[:48]
        per.append([tpl, label] + [round(mean([sum(scores[s][i]) / 2 for i in idx]), 2)
                                   for s in scores])
    print()
    print_table(["task", "request", *scores], per)
    print(f"leaks (tasks whose private values reached the cloud): {leaks}; errors: {errors}")
    emit_json({"bench": "privacy_quality", "tasks": len(tasks), "leaks": leaks,
               "errors": errors, "scores": {s: round(v, 4) for s, v in score.items()},
               "facts_used": {s: round(mean([x[0] for x in v]), 4) for s, v in scores.items()},
               "sketch_minus_local_only": round(score["sketch"] - score["local_only"], 4),
               "sketch_minus_cloud_without_context": round(
                   score["sketch"] - score["cloud_without_context"], 4)})

if __name__ == "__main__":
    main()
