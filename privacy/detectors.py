"""Detectors: one small interface, a registry, and the built-in ones.

A detector reads the request's texts (the caller-marked private ones and the ordinary
ones) and returns private spans. ``marked`` and ``overlap`` read the caller's marks;
``pii`` finds structured personal data with checked patterns (cards pass Luhn, IBANs
pass mod-97, IPs parse); ``ner`` (privacy/ner.py) finds names, places and
organisations with a local spaCy pipeline. A detector that raises makes the whole
request's detection fail, and a failed detection never lets a byte out (guard.py).
"""

from __future__ import annotations

import abc
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Callable

from privacy.overlap import ContextIndex
from privacy.pattern import Pattern
from privacy.credentials import SECRET_PATTERNS
from privacy.spans import Span, digits


@dataclass
class Texts:
    """What detectors read: caller-marked private texts and every other text."""

    marked: list[str]
    open: list[str]
    memory: object = None  # privacy.memory.Recalled: what earlier requests taught
    _index: ContextIndex | None = field(default=None, repr=False)

    @property
    def index(self) -> ContextIndex:
        if self._index is None:
            self._index = ContextIndex(self.marked)
        return self._index


class Detector(abc.ABC):
    """Finds private spans; ``start`` loads anything heavy (called once, in a thread)."""

    name = "detector"

    def start(self) -> None:
        """Load models or tables before the first request."""

    @abc.abstractmethod
    def detect(self, texts: Texts) -> list[Span]:
        """Private spans of ``texts`` (each span's text occurs verbatim in one of them)."""


DetectorFactory = Callable[..., Detector]
DETECTORS: dict[str, DetectorFactory] = {}


def register_detector(name: str) -> Callable[[DetectorFactory], DetectorFactory]:
    def deco(factory: DetectorFactory) -> DetectorFactory:
        DETECTORS[name] = factory
        return factory

    return deco


def known_detectors() -> list[str]:
    from privacy import memory, ner  # noqa: F401  (register "remembered" and "ner")

    return sorted(DETECTORS)


def build_detector(name: str, **options) -> Detector:
    known_detectors()
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector '{name}' (known: {', '.join(sorted(DETECTORS))})"
                         ) from None
    return factory(**options)


@register_detector("marked")
class MarkedDetector(Detector):
    """The caller's ``private_context`` and ``"private": true`` messages, whole."""

    name = "marked"

    def detect(self, texts: Texts) -> list[Span]:
        return [Span(t, "CONTEXT", self.name) for t in texts.marked if t.strip()]


@register_detector("overlap")
class OverlapDetector(Detector):
    """Spans of ordinary messages that repeat the marked context (privacy/overlap.py)."""

    name = "overlap"

    def detect(self, texts: Texts) -> list[Span]:
        if not texts.marked:
            return []
        index = texts.index
        return [Span(text[a:b], "PRIVATE", self.name)
                for text in texts.open for a, b in index.shared(text)]


# -- structured personal data -----------------------------------------------------------

def _luhn(number: str) -> bool:
    d = [int(c) for c in digits(number)]
    if not 13 <= len(d) <= 19:
        return False
    total = sum(d[-1::-2]) + sum(sum(divmod(2 * x, 10)) for x in d[-2::-2])
    return total % 10 == 0


def _iban(text: str) -> bool:
    s = re.sub(r"\s+", "", text).upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ip(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified)


def _phone(text: str) -> bool:
    n = len(digits(text))
    # A separator or a leading + says "phone number", not an arbitrary long integer.
    return 9 <= n <= 15 and (text.lstrip().startswith("+") or bool(re.search(r"\d[\s.()-]+\d",
                                                                              text)))


_DATE = (r"(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}"
         r"|(?:\d{1,2}(?:st|nd|rd|th)?\s+)?(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov"
         r"|dec)[a-z]*\.?(?:\s+\d{1,2}(?:st|nd|rd|th)?)?,?\s+\d{4})")


_DIGIT = re.compile(r"\d")
PATTERNS: tuple[Pattern, ...] = (
    *SECRET_PATTERNS,  # first: a URL's user:password@host is not an e-mail address
    Pattern("EMAIL", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            hint=re.compile("@")),
    Pattern("CARD", re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])"), _luhn,
            hint=_DIGIT),
    Pattern("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), _iban, hint=_DIGIT),
    Pattern("NATIONAL_ID", re.compile(
        r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"  # US SSN
        r"|\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),  # UK NINO
        hint=_DIGIT),
    Pattern("NATIONAL_ID", re.compile(
        r"(?i)\b(?:passport|national id|identity card|id card|ssn|social security|tax id"
        r"|personal id)(?:\s+(?:number|no\.?|#))?\s*(?:is|:)?\s*([A-Z0-9][A-Z0-9-]{5,})"),
        group=1, hint=re.compile(r"(?i)passport|\bid\b|identity|ssn|social|tax|personal")),
    # an address may end a sentence ("... at 10.0.0.12."): only ".digit" continues it
    Pattern("IP_ADDRESS", re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)"
                                     r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}"
                                     r"(?![\w:])|(?<![\w:])[0-9A-Fa-f:]{2,}::[0-9A-Fa-f:]*"),
            _ip, hint=re.compile(r"\d\.\d|:")),
    Pattern("DATE_OF_BIRTH", re.compile(
        r"(?i)\b(?:born|birth\s?day|date of birth|d\.?o\.?b\.?)\W{0,3}(?:on|is|was|:)?\s*("
        + _DATE + ")"), group=1, hint=_DIGIT),
    Pattern("PHONE", re.compile(r"(?<![\w+])\+?\(?\d[\d\s().-]{7,19}\d(?![\w])"), _phone,
            hint=_DIGIT),
)


@register_detector("pii")
class PatternDetector(Detector):
    """Secrets (privacy/credentials.py), e-mail, phone, payment card, IBAN, national id, IP
    address, date of birth."""

    name = "pii"

    def __init__(self, patterns: tuple[Pattern, ...] = PATTERNS) -> None:
        self.patterns = patterns

    def detect(self, texts: Texts) -> list[Span]:
        spans = []
        for text in (*texts.marked, *texts.open):
            taken: list[tuple[int, int]] = []  # earlier patterns win overlapping matches
            for p in self.patterns:
                if p.hint is not None and not p.hint.search(text):
                    continue
                for m in p.regex.finditer(text):
                    a, b = m.span(p.group)
                    value = m.group(p.group).strip()
                    if not value or any(a < y and x < b for x, y in taken):
                        continue
                    if p.check is not None and not p.check(value):
                        continue
                    taken.append((a, b))
                    spans.append(Span(value, p.kind, self.name))
        return spans
