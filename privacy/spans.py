"""Private spans and the normal forms they are compared in.

Two strings "say the same thing" for the egress check when they agree after Unicode
NFKC, case folding, dropping invisible format characters (zero-width joiners …) and
collapsing whitespace; numbers also agree with their separators removed
(``+1 (555) 010-4477`` and ``15550104477``). Spans are never logged: ``fingerprint``
gives the short hash that logs, metrics and error messages carry instead.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_NON_DIGIT = re.compile(r"\D+")

# Words too common to make a shared run of words private on their own.
STOPWORDS = frozenset("""
a an the and or but if then else of to in on at by for with from into onto about as is are
was were be been being am do does did have has had having i me my mine myself you your yours
he him his she her hers it its we us our ours they them their theirs this that these those
there here what which who whom whose when where why how not no nor so than too very can
could will would shall should may might must just also only all any some each every both
either neither one two please write give make tell let get up down out over under again more
most other such own same s t don now
""".split())


def _drop_format_chars(text: str) -> str:
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def normalise(text: str) -> str:
    """NFKC, case-folded, format characters dropped, whitespace collapsed to one space."""
    text = _drop_format_chars(unicodedata.normalize("NFKC", text)).casefold()
    return _SPACE.sub(" ", text).strip()


def digits(text: str) -> str:
    return _NON_DIGIT.sub("", text)


def fingerprint(text: str) -> str:
    """What may be logged about a span: 12 hex digits of its normalised SHA-256."""
    return hashlib.sha256(normalise(text).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Token:
    """A word of a text: its normal form and where it lies in the original."""

    norm: str
    start: int
    end: int
    distinctive: bool  # names, numbers, codes: private on their own when shared


def tokens(text: str) -> list[Token]:
    """Words of ``text`` (NFKC per word, so offsets stay those of the original)."""
    out = []
    for m in _WORD.finditer(text):
        word = m.group()
        norm = normalise(word)
        if not norm:
            continue
        # Numbers and names of 3+ characters: "1990", "Lina"; not "7" or "Mr".
        distinctive = norm not in STOPWORDS and len(norm) >= 3 and (
            any(c.isdigit() for c in word) or word[:1].isupper() or len(norm) >= 12)
        out.append(Token(norm, m.start(), m.end(), distinctive))
    return out


@dataclass(frozen=True)
class Span:
    """A private piece of text. ``kind`` names the placeholder (``PERSON``, ``EMAIL`` …);
    ``source`` the detector that found it."""

    text: str
    kind: str
    source: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.text)

    def __repr__(self) -> str:  # never print the text itself
        return f"Span({self.kind}, {self.source}, sha256:{self.fingerprint})"
