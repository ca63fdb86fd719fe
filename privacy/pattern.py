"""A checked regular expression that finds one kind of private value."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Pattern:
    kind: str
    regex: re.Pattern
    check: Callable[[str], bool] | None = None
    group: int = 0  # the capture group that is private (keyword-led patterns)
    hint: re.Pattern | None = None  # cheap test a text must pass first (most texts fail it)
