"""Detectors: one small interface, a registry, and the built-in ones.

A detector reads the request's texts (the caller-marked private ones and the ordinary
ones) and returns private spans. ``marked`` and ``overlap`` read the caller's marks;
``pii`` finds structured personal data with checked patterns (credentials.py,
banking.py, national_ids.py; IPs parse); ``ner`` (privacy/ner.py) finds names, places and
organisations with a local spaCy pipeline. A detector that raises makes the whole
request's detection fail, and a failed detection never lets a byte out (guard.py).
"""

from __future__ import annotations

import abc
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Callable

from privacy.memo import TextMemo
from privacy.overlap import ContextIndex
from privacy.pattern import DIGIT, Pattern, shorter
from privacy.credentials import SECRET_PATTERNS
from privacy.banking import BANKING_PATTERNS
from privacy.national_ids import NATIONAL_ID_PATTERNS
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
    from privacy import memory, names, ner  # noqa: F401  (register the optional ones)

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

def _ip(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified)


def _ip6(text: str) -> bool:
    # a leading "::" with one group ("a[::2]") is a slice in code, not an address
    if text.startswith("::") and text.count(":") < 3 and "." not in text:
        return False
    return _ip(text)


def _one_colon_less(text: str) -> str:
    """``2001:db8::1:`` before a word: the last colon is punctuation (``::`` is not)."""
    return text[:-1] if text.endswith(":") and not text.endswith("::") else text


def _own_parens(text: str) -> str:
    """``(0044 20 …`` opened by the sentence, not the number: the bracket is not in it."""
    return text[1:] if text.startswith("(") and ")" not in text else text


def _phone(text: str) -> bool:
    n = len(digits(text))
    # A separator or a leading + says "phone number", not an arbitrary long integer.
    return 9 <= n <= 15 and (text.lstrip().startswith("+") or bool(re.search(r"\d[\s.()-]+\d",
                                                                              text)))


def _phone_parts(text: str) -> list[str]:
    """Where an international number may sit inside a refused match, longest first: runs
    that start with ``+`` or ``(``, or with ``00`` after short numbers only (``room 42
    0044 20 7946 0958``, ``42 42 0044 ...``) or after a wider gap than one space. Other
    runs are not tried: any 12 digits in groups look like a phone, and ``3704 0044 0532``
    is the inside of a longer grouped number."""
    cuts = [0] + [i + 1 for i, ch in enumerate(text) if ch.isspace()]
    ends = [len(text)] + [i for i, ch in enumerate(text) if ch.isspace()]
    parts = {text[a:b].strip() for a in cuts for b in ends if b > a
             if text[a] in "+(" or (text.startswith("00", a) and _opens_a_number(text, a))}
    return sorted(parts, key=len, reverse=True)


def _opens_a_number(text: str, a: int) -> bool:
    """A ``00`` at ``a`` starts a number of its own when only short numbers (counts,
    room numbers: three digits at most) come before it, or a gap wider than one space."""
    before = text[:a]
    return before[-2:].isspace() or all(len(group) <= 3 for group in before.split())


_DATE = (r"(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}"
         r"|(?:\d{1,2}(?:st|nd|rd|th)?\s+)?(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov"
         r"|dec)[a-z]*\.?(?:\s+\d{1,2}(?:st|nd|rd|th)?)?,?\s+\d{4})")


PATTERNS: tuple[Pattern, ...] = (
    *SECRET_PATTERNS,  # first: a URL's user:password@host is not an e-mail address
    Pattern("EMAIL", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            hint=re.compile("@")),
    # A whole run that starts with "+" and is a valid phone is one, before any other
    # digit kind can take its groups ("+49 (100) 10.10.10.10" is not an IP address); a run
    # that is not valid as a whole is left to the patterns below (no parts tried here).
    Pattern("PHONE", re.compile(r"(?<![\w+])\+\(?\d[\d\s().-]{7,28}\d(?![\w])"), _phone,
            hint=re.compile(r"\+\(?\d"), trim=_own_parens, parts=lambda _: ()),
    *NATIONAL_ID_PATTERNS,  # before cards: a grouped id may pass Luhn too
    *BANKING_PATTERNS,  # an IBAN before a card: its digits may pass Luhn
    # an address may end a sentence ("... at 10.0.0.12."): only ".digit" continues it
    Pattern("IP_ADDRESS", re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)"), _ip,
            hint=re.compile(r"\d\.\d")),
    # any run of hex digits and colons (and a trailing dotted quad), checked by ipaddress
    Pattern("IP_ADDRESS", re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}|:)[0-9A-Fa-f:]*:"
                                     r"[0-9A-Fa-f:]*(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?!\w)"),
            _ip6, hint=re.compile(r"[0-9A-Fa-f]:|::"), trim=_one_colon_less),
    Pattern("DATE_OF_BIRTH", re.compile(
        r"(?i)\b(?:born|birth\s?day|date of birth|d\.?o\.?b\.?)\W{0,3}(?:on|is|was|:)?\s*("
        + _DATE + ")"), group=1, hint=DIGIT),
    Pattern("PHONE", re.compile(r"(?<![\w+])\+?\(?\d[\d\s().-]{7,28}\d(?![\w])"), _phone,
            hint=DIGIT, trim=_own_parens, parts=_phone_parts),
)


@register_detector("pii")
class PatternDetector(Detector):
    """Secrets (privacy/credentials.py), e-mail, phone, payment card, IBAN, national id, IP
    address, date of birth."""

    name = "pii"

    def __init__(self, patterns: tuple[Pattern, ...] = PATTERNS) -> None:
        self.patterns = patterns
        self.memo: TextMemo[tuple[tuple[str, str], ...]] = TextMemo()

    def detect(self, texts: Texts) -> list[Span]:
        return [Span(value, kind, self.name)
                for text in (*texts.marked, *texts.open)
                for value, kind in self.memo.get(text, self.find)]

    def find(self, text: str) -> tuple[tuple[str, str], ...]:
        """(value, kind) of each private value in ``text``."""
        found: list[tuple[str, str]] = []
        taken: list[tuple[int, int]] = []  # earlier patterns win overlapping matches
        for p in self.patterns:
            if p.hint is None or p.hint.search(text):
                found += [(value, p.kind) for value in _matches(p, text, taken)]
        return tuple(found)


def _matches(p: Pattern, text: str, taken: list[tuple[int, int]]):
    """Values of ``p`` in ``text`` that no earlier pattern took. A greedy regex must not
    hide a valid value behind an invalid one: a match its check refuses is cut into its
    pattern's ``parts`` (default: before each space, from the right)."""
    pos = 0
    while (m := p.regex.search(text, pos)) is not None:
        a, b = m.span(p.group)
        value = m.group(p.group).strip()
        if p.trim is not None:  # a trim keeps a substring: move the span
            trimmed = p.trim(value)
            a += m.group(p.group).find(trimmed)
            value, b = trimmed, a + len(trimmed)
        if not value or any(a < y and x < b for x, y in taken):
            pos = m.end() if m.end() > m.start() else m.start() + 1
            continue
        if p.check is not None and not p.check(value):
            fit = next((v for v in (p.parts or shorter)(value) if p.check(v)), None)
            if fit is None:
                pos = m.end()
                continue
            a += value.find(fit)
            value, b = fit, a + len(fit)
        taken.append((a, b))
        yield value
        pos = max(m.end(), m.start() + 1)
