"""IFEval's verifiable instructions (Zhou et al. 2023), checked in strict mode.

Each check takes the response and the instruction's kwargs and says whether the
instruction was followed; a prompt is graded 1.0 only if every instruction is. The
semantics follow the paper's reference checker; ``language:response_language`` is left
out (it needs a language detector), and prompts using it are not in the label set.
"""

from __future__ import annotations

import json
import re
from typing import Callable

Check = Callable[[str, dict], bool]
CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def deco(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn
    return deco


def _compare(value: int, relation: str, target: int) -> bool:
    return value < target if relation == "less than" else value >= target


def _words(text: str) -> list[str]:
    return re.findall(r"\b\w+\b", text)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\s?\*\*\*\s?", text)]


@check("punctuation:no_comma")
def no_comma(r: str, kw: dict) -> bool:
    return "," not in r


@check("length_constraints:number_words")
def number_words(r: str, kw: dict) -> bool:
    return _compare(len(_words(r)), kw["relation"], int(kw["num_words"]))


@check("length_constraints:number_sentences")
def number_sentences(r: str, kw: dict) -> bool:
    return _compare(len(_sentences(r)), kw["relation"], int(kw["num_sentences"]))


@check("length_constraints:number_paragraphs")
def number_paragraphs(r: str, kw: dict) -> bool:
    paragraphs = _paragraphs(r)
    if any(not p.strip() for i, p in enumerate(paragraphs) if 0 < i < len(paragraphs) - 1):
        return False
    return len([p for p in paragraphs if p.strip()]) == int(kw["num_paragraphs"])


@check("length_constraints:nth_paragraph_first_word")
def nth_paragraph_first_word(r: str, kw: dict) -> bool:
    paragraphs = [p for p in re.split(r"\n\s*\n", r) if p.strip()]
    n = int(kw["nth_paragraph"])
    if len(paragraphs) != int(kw["num_paragraphs"]) or n > len(paragraphs):
        return False
    first = re.sub(r"^[^\w]*", "", paragraphs[n - 1].strip()).split()
    word = re.sub(r"[^\w]", "", first[0]).lower() if first else ""
    return word == str(kw["first_word"]).lower()


@check("keywords:forbidden_words")
def forbidden_words(r: str, kw: dict) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, re.I) for w in kw["forbidden_words"])


@check("keywords:existence")
def existence(r: str, kw: dict) -> bool:
    return all(re.search(re.escape(w), r, re.I) for w in kw["keywords"])


@check("keywords:frequency")
def frequency(r: str, kw: dict) -> bool:
    n = len(re.findall(re.escape(kw["keyword"]), r, re.I))
    return _compare(n, kw["relation"], int(kw["frequency"]))


@check("keywords:letter_frequency")
def letter_frequency(r: str, kw: dict) -> bool:
    n = r.lower().count(str(kw["letter"]).lower())
    return _compare(n, kw["let_relation"], int(kw["let_frequency"]))


@check("detectable_format:number_highlighted_sections")
def highlighted(r: str, kw: dict) -> bool:
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.strip("*").strip())
    return n >= int(kw["num_highlights"])


@check("detectable_format:number_bullet_lists")
def bullets(r: str, kw: dict) -> bool:
    n = len(re.findall(r"^\s*\*[^\*].*$", r, re.M)) + len(re.findall(r"^\s*-.*$", r, re.M))
    return n == int(kw["num_bullets"])


@check("detectable_format:title")
def title(r: str, kw: dict) -> bool:
    return any(t.strip() for t in re.findall(r"<<([^\n]+)>>", r))


@check("detectable_format:json_format")
def json_format(r: str, kw: dict) -> bool:
    text = re.sub(r"^```(?:json|Json|JSON)?\s*|\s*```$", "", r.strip())
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@check("detectable_format:multiple_sections")
def multiple_sections(r: str, kw: dict) -> bool:
    parts = re.split(r"\s?" + re.escape(kw["section_spliter"]) + r"\s?\d+\s?", r)
    return len(parts) - 1 >= int(kw["num_sections"])


@check("detectable_format:constrained_response")
def constrained(r: str, kw: dict) -> bool:
    return any(o in r for o in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


@check("detectable_content:number_placeholders")
def placeholders(r: str, kw: dict) -> bool:
    return len(re.findall(r"\[.*?\]", r)) >= int(kw["num_placeholders"])


@check("detectable_content:postscript")
def postscript(r: str, kw: dict) -> bool:
    marker = str(kw["postscript_marker"]).strip()
    if marker.lower() == "p.p.s":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker.lower() == "p.s.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, r.lower(), re.M))


@check("startend:end_checker")
def end_checker(r: str, kw: dict) -> bool:
    return r.strip().strip('"').lower().endswith(str(kw["end_phrase"]).strip().lower())


@check("startend:quotation")
def quotation(r: str, kw: dict) -> bool:
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


@check("change_case:english_lowercase")
def lowercase(r: str, kw: dict) -> bool:
    return r == r.lower()


@check("change_case:english_capital")
def capital(r: str, kw: dict) -> bool:
    return r == r.upper()


@check("change_case:capital_word_frequency")
def capital_words(r: str, kw: dict) -> bool:
    n = sum(1 for w in _words(r) if w.isupper())
    return _compare(n, kw["capital_relation"], int(kw["capital_frequency"]))


@check("combination:repeat_prompt")
def repeat_prompt(r: str, kw: dict) -> bool:
    return r.strip().lower().startswith(str(kw["prompt_to_repeat"]).strip().lower())


@check("combination:two_responses")
def two_responses(r: str, kw: dict) -> bool:
    parts = [p.strip() for p in r.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


def grade(instructions: list[dict], response: str) -> float:
    """1.0 when every instruction is followed (IFEval's strict prompt-level accuracy)."""
    return float(all(CHECKS[i["id"]](response, i.get("kwargs") or {}) for i in instructions))
