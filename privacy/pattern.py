"""A checked regular expression that finds one kind of private value."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from privacy.spans import digits


DIGIT = re.compile(r"\d")  # the hint of every numeric pattern


@dataclass(frozen=True)
class Pattern:
    kind: str
    regex: re.Pattern
    check: Callable[[str], bool] | None = None
    group: int = 0  # the capture group that is private (keyword-led patterns)
    hint: re.Pattern | None = None  # cheap test a text must pass first (most texts fail it)
    trim: Callable[[str], str] | None = None  # drops what a greedy match took too much of
    parts: Callable[[str], list[str]] | None = None  # where to look inside a refused match
    # (default: ``shorter``)


def shorter(value: str) -> list[str]:
    """``value`` cut before each space, longest first (``DE89 3704 … 00 42``: a greedy
    match took the word after it)."""
    return [value[:i].rstrip() for i in range(len(value) - 1, 0, -1)
            if value[i].isspace() and not value[i - 1].isspace()]


def luhn(number: str) -> bool:
    """The Luhn check digit holds (cards, Canada's SIN)."""
    d = [int(c) for c in digits(number)]
    total = sum(d[-1::-2]) + sum(sum(divmod(2 * x, 10)) for x in d[-2::-2])
    return total % 10 == 0
