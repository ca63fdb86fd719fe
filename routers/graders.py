"""Automatic graders for router labels: an answer and its prompt row in, a score in [0, 1].

Each grader is registered by name; a prompt row names its own (``"grader"``), so one
label file can mix task types. ``judge`` is different (it asks a model) and lives in
routers/label.py.
"""

from __future__ import annotations

import re
import string
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path
from typing import Callable

Grader = Callable[[dict, str], float]
GRADERS: dict[str, Grader] = {}

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CODE = re.compile(r"```(?:python|py|Python)?\s*\n(.*?)```", re.DOTALL)


def grader(name: str) -> Callable[[Grader], Grader]:
    def deco(fn: Grader) -> Grader:
        GRADERS[name] = fn
        return fn
    return deco


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".")


def normalise_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, one space."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


@grader("exact")
def grade_exact(row: dict, answer: str) -> float:
    return float(_normalise(answer) == _normalise(str(row["reference"])))


@grader("numeric")
def grade_numeric(row: dict, answer: str) -> float:
    """The first number after the last ``Answer:`` if there is one, else the last number."""
    marked = "Answer:" in answer
    tail = answer.rsplit("Answer:", 1)[-1] if marked else answer
    numbers = _NUMBER.findall(tail.replace(",", "").replace("$", ""))
    if not numbers:
        return 0.0
    return float(abs(float(numbers[0 if marked else -1]) - float(row["reference"])) < 1e-6)


@grader("choice")
def grade_choice(row: dict, answer: str) -> float:
    """Multiple choice: the first standalone option letter (``B``, ``(B)``, ``B.``,
    ``answer is B``) equals the reference letter."""
    m = re.search(r"answer is:?\s*\(?([A-J])\b", answer) or re.search(
        r"(?:^|[\s(\[*])([A-J])(?:[).:\]*]|\s|$)", answer.strip())
    return float(bool(m) and m.group(1) == str(row["reference"]).strip().upper())


@grader("contains")
def grade_contains(row: dict, answer: str) -> float:
    """Short answers: one of the reference answers appears, as whole words, in the
    normalised answer (TriviaQA and NQ-open's usual containment match)."""
    got = f" {normalise_answer(answer)} "
    refs = row["reference"] if isinstance(row["reference"], list) else [row["reference"]]
    return float(any(n and f" {n} " in got for n in map(normalise_answer, map(str, refs))))


def _strip_math(s: str) -> str:
    s = s.strip().strip("$").strip()
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                     ("dfrac", "frac"), ("tfrac", "frac"), ("^\\circ", ""), ("^{\\circ}", ""),
                     ("\\%", ""), ("%", ""), ("\\$", ""), ("\\text{ }", ""), (" ", "")):
        s = s.replace(old, new)
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    s = re.sub(r"\\mbox\{(.*?)\}", r"\1", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"(\d),(\d{3})", r"\1\2", s)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


@grader("math")
def grade_math(row: dict, answer: str) -> float:
    """MATH: the last ``\\boxed{}`` of the answer equals the reference after the usual
    normalisation (spaces, ``\\left``/``\\right``, ``dfrac``, units of degrees, ``$``)."""
    got = boxed(answer)
    if got is None:
        return 0.0
    a, b = _strip_math(got), _strip_math(str(row["reference"]))
    if a == b:
        return 1.0
    try:
        return float(abs(float(a) - float(b)) < 1e-6)
    except ValueError:
        return 0.0


def extract_code(prompt: str, answer: str) -> str:
    """The model's function: a fenced block if there is one, else the raw answer; a
    completion that does not redefine the function is appended to the prompt."""
    blocks = _CODE.findall(answer)
    code = max(blocks, key=len) if blocks else answer
    return code if re.search(r"^\s*def \w+", code, re.M) else prompt + code


def run_python(program: str, timeout_s: float = 10.0) -> bool:
    """True when ``program`` exits 0 in a fresh, isolated interpreter within the timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.py"
        path.write_text(program)
        try:
            r = subprocess.run([sys.executable, "-I", str(path)], cwd=tmp, timeout=timeout_s,
                               capture_output=True)
        except subprocess.TimeoutExpired:
            return False
    return r.returncode == 0


@grader("unit_tests")
def grade_unit_tests(row: dict, answer: str, timeout_s: float = 10.0) -> float:
    """HumanEval: prompt + the model's function + ``test`` + ``check(entry_point)``."""
    program = (row["prompt"] + "\n" + extract_code(row["prompt"], answer) + "\n\n"
               + row["test"] + f"\n\ncheck({row['entry_point']})\n")
    return float(run_python(program, timeout_s))


@grader("python_tests")
def grade_python_tests(row: dict, answer: str, timeout_s: float = 10.0) -> float:
    """MBPP: the model's code, the row's ``setup``, then its ``assert`` lines."""
    blocks = _CODE.findall(answer)
    code = max(blocks, key=len) if blocks else answer
    program = code + "\n\n" + row.get("setup", "") + "\n" + "\n".join(row["tests"]) + "\n"
    return float(run_python(program, timeout_s))


@grader("ifeval")
def grade_ifeval(row: dict, answer: str) -> float:
    from routers.ifeval import grade

    return grade(row["reference"], answer)
