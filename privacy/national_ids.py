"""National identity numbers, each format with its own check so that ordinary numbers
are not mistaken for them.

- US Social Security number (``123-45-6789``; never area 000, 666 or 9xx).
- UK National Insurance number (``AB 12 34 56 C``; the prefixes HMRC never issues are
  refused).
- Spain's DNI and NIE (``12345678Z``, ``X1234567L``): the letter is the mod-23 check.
- France's NIR / numéro de sécurité sociale (15 digits, grouped or not; key = 97 − n mod 97,
  Corsica's 2A/2B included).
- India's Aadhaar (``2345 6789 0123``, grouped; Verhoeff check digit).
- Canada's SIN (``046-454-286``, grouped; Luhn).
- Any id after the words that name one ("passport number X1234567").

Ungrouped 12- and 9-digit numbers are left alone: a check digit alone passes one number in
ten, and order numbers look like that.
"""

from __future__ import annotations

import re

from privacy.pattern import DIGIT, Pattern, luhn
from privacy.spans import digits

_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"

_VERHOEFF_D = ("0123456789", "1234067895", "2340178956", "3401289567", "4012395678",
               "5987604321", "6598710432", "7659821043", "8765932104", "9876543210")
_VERHOEFF_P = ("0123456789", "1576283094", "5803796142", "8916043527", "9453126870",
               "4286573901", "2793806415", "7046913258")


def _verhoeff(number: str) -> bool:
    c = 0
    for i, ch in enumerate(reversed(digits(number))):
        c = int(_VERHOEFF_D[c][int(_VERHOEFF_P[i % 8][int(ch)])])
    return c == 0


def _dni(text: str) -> bool:
    s = text.upper()
    body = "XYZ".index(s[0]) if s[0] in "XYZ" else None
    number = int((str(body) + s[1:-1]) if body is not None else s[:-1])
    return _DNI_LETTERS[number % 23] == s[-1]


def _nir(text: str) -> bool:
    s = re.sub(r"\s", "", text).upper()
    corsica = {"2A": "19", "2B": "18"}.get(s[5:7])  # the key is computed on 19 / 18
    if corsica:
        s = s[:5] + corsica + s[7:]
    return s.isdigit() and len(s) == 15 and 97 - int(s[:13]) % 97 == int(s[13:])


def _sin(text: str) -> bool:
    return digits(text)[0] != "8" and luhn(text)


# Digit groups that continue a number already begun are that number's, not an id: after
# a digit or "+" and a space ("+1 555 ..."), or a bracketed area code ("+49 (10) ...").
_NOT_CONTINUED = r"(?<![\d+] )(?<!\d\) )"

NATIONAL_ID_PATTERNS: tuple[Pattern, ...] = (
    Pattern("NATIONAL_ID", re.compile(
        r"(?<![\w+-])" + _NOT_CONTINUED +
        r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])"  # US SSN
        r"|\b(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2}"
        r" ?[A-D]\b"), hint=DIGIT),  # UK NINO
    Pattern("NATIONAL_ID", re.compile(r"(?i)\b[XYZ]?\d{7,8}[A-Z]\b"),
            lambda s: len(s) == 9 and _dni(s), hint=DIGIT),  # ES DNI / NIE
    Pattern("NATIONAL_ID", re.compile(
        r"(?<![\d+-])[12] ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[ABab])"
        r" ?\d{3} ?\d{3}"
        r" ?\d{2}(?![\d-])"), _nir, hint=DIGIT),  # FR NIR
    Pattern("NATIONAL_ID", re.compile(r"(?<![\d+-])" + _NOT_CONTINUED + r"[2-9]\d{3}([ -])"
                                      r"\d{4}\1\d{4}(?![\d-]|\1\d{4})"),
            _verhoeff, hint=DIGIT),  # IN Aadhaar
    Pattern("NATIONAL_ID", re.compile(r"(?<![\d+-])" + _NOT_CONTINUED + r"[1-79]\d{2}([ -])"
                                      r"\d{3}\1\d{3}(?![\d-]|\1\d{3})"),
            _sin, hint=DIGIT),  # CA SIN
    Pattern("NATIONAL_ID", re.compile(
        r"(?i)\b(?:passport|national id|identity card|id card|ssn|social security|tax id"
        r"|personal id)(?:\s+(?:number|no\.?|#))?\s*(?:is|:)?\s*([A-Z0-9][A-Z0-9-]{5,})"),
        group=1, hint=re.compile(r"(?i)passport|\bid\b|identity|ssn|social|tax|personal")),
)
