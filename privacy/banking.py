"""Payment cards and IBANs, each checked: a card passes Luhn, an IBAN has its country's
length (the SWIFT IBAN registry) and passes ISO 7064 mod 97-10."""

from __future__ import annotations

import re

from privacy.pattern import DIGIT, Pattern, luhn, shorter
from privacy.spans import digits

# Total IBAN length per country code (SWIFT IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def _card(number: str) -> bool:
    d = digits(number)
    return 13 <= len(d) <= 19 and d[0] != "0" and luhn(d)  # no issuer number starts with 0


def _iban(text: str) -> bool:
    s = re.sub(r"\s+", "", text).upper()
    if IBAN_LENGTHS.get(s[:2], 0) != len(s):
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _iban_length(text: str) -> str:
    """The match cut to its country's length (the words after it are not part of it)."""
    want = IBAN_LENGTHS.get(text[:2].upper())
    if want is None:
        return text
    seen = 0
    for i, ch in enumerate(text):
        seen += not ch.isspace()
        if seen == want:
            return text[:i + 1]
    return text


_PRINTED_CARD = re.compile(r"\d{4}([ -])\d{4}\1\d{4}\1\d{4}|\d{4}([ -])\d{6}\2\d{5}")


def _card_parts(text: str) -> list[str]:
    """A refused match may be a card printed 4-4-4-4 (or Amex's 4-6-5) and the number
    after it; other cuts are not tried (a prefix of any digit run passes Luhn one time in
    ten)."""
    return [p for p in shorter(text) if _PRINTED_CARD.fullmatch(p)]


BANKING_PATTERNS: tuple[Pattern, ...] = (
    Pattern("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), _iban, hint=DIGIT,
            trim=_iban_length),
    Pattern("CARD", re.compile(r"(?<![\d+-])(?:\d[ -]?){12,18}\d(?![\d-])"), _card,
            hint=DIGIT, parts=_card_parts),
)
