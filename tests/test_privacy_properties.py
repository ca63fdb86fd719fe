"""Structured detectors hold wherever the value sits: hypothesis generates IPv4 and IPv6
addresses (every textual form), IBANs with a valid checksum, international phone numbers
and national ids, and puts them inside varied surrounding text (start or end of the
text, before a full stop, in brackets or quotes, after a colon, with a port, on their
own line). The detector must find the value, of the right kind, every time (a span that
holds it). A value with a broken checksum must not be found."""

from __future__ import annotations

import ipaddress
import os
import re
import string

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
import pytest

from privacy.detectors import PatternDetector, Texts

SETTINGS = settings(max_examples=int(os.environ.get("TANDEM_PROPERTY_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
WORDS = st.lists(st.sampled_from(["please", "check", "the", "server", "my", "account", "is",
                                  "call", "me", "on", "reach", "Ana", "at", "Sent", "from",
                                  "note:", "id", "value", "and", "then", "42", "ok"]),
                 max_size=6).map(" ".join)
OPEN = st.sampled_from(["", " ", "(", "[", '"', "'", "<", "ip=", "value: ", "\n", "*", "`"])
CLOSE = st.sampled_from(["", " ", ".", ",", ";", ")", "]", '"', "'", ">", "!", "?", ".\n",
                         "\n", " and more", "`", "*"])


def found(text: str) -> dict[str, str]:
    return {s.text: s.kind for s in PatternDetector().detect(Texts([], [text]))}


def kind_of(value: str, text: str) -> str | None:
    """The kind of the span that holds ``value`` (None when no span does)."""
    return next((kind for span, kind in found(text).items() if value in span), None)


def assert_found(value: str, text: str, kind: str) -> None:
    assert kind_of(value, text) == kind, (text, found(text))


@st.composite
def embedded(draw, values):
    value = draw(values)
    before, after = draw(WORDS), draw(WORDS)
    text = f"{before} {draw(OPEN)}{value}{draw(CLOSE)} {after}".strip(" ")
    # a number right next to another ("42 2000 0000 0009") is ambiguous to any reader:
    # one number or two? (test_a_number_after_a_number covers the common case)
    assume(not re.search(r"\d[ -]" + re.escape(value) + "|" + re.escape(value) + r"[ -]\d",
                         text))
    return value, text


# -- IP addresses --------------------------------------------------------------------

def _public(ip) -> bool:
    return not (ip.is_loopback or ip.is_unspecified)


IPV4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address).filter(_public).map(str)
def _ipv6_text(groups: list[int], form: str, upper: bool) -> str:
    ip = ipaddress.IPv6Address(sum(g << (16 * (7 - i)) for i, g in enumerate(groups)))
    text = getattr(ip, form)
    return text.upper() if upper else text


def _worth_finding(text: str) -> bool:
    """Leading-``::`` forms with one group (``::2``) are slices in code, not addresses."""
    return not (text.startswith("::") and text.count(":") < 3 and "." not in text)


# groups are zero half the time, so compressed forms (2001:db8::1) are common
GROUP = st.one_of(st.just(0), st.integers(0, 0xFFFF))
IPV6 = st.builds(_ipv6_text, st.lists(GROUP, min_size=8, max_size=8),
                 st.sampled_from(["compressed", "exploded"]), st.booleans()).filter(
    lambda t: _public(ipaddress.IPv6Address(t)) and _worth_finding(t))


@SETTINGS
@given(IPV4, st.integers(1, 65535))
def test_ipv4_with_a_port(value, port):
    text = f"connect to {value}:{port} now"
    assert_found(value, text, "IP_ADDRESS")


@SETTINGS
@given(IPV6, st.integers(1, 65535))
def test_ipv6_in_brackets_with_a_port(value, port):
    text = f"curl http://[{value}]:{port}/health"
    assert_found(value, text, "IP_ADDRESS")


# -- IBAN ----------------------------------------------------------------------------

IBAN_LENGTHS = {"DE": 22, "FR": 27, "GB": 22, "ES": 24, "IT": 27, "NL": 18, "BE": 16,
                "CH": 21, "AT": 20, "PL": 28, "SE": 24, "NO": 15, "IE": 22, "PT": 25}



def _with_check(country: str, bban: str) -> str:
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


@st.composite
def ibans(draw, valid: bool = True):
    country = draw(st.sampled_from(sorted(IBAN_LENGTHS)))
    n = IBAN_LENGTHS[country] - 4
    alphabet = string.digits if draw(st.booleans()) else string.digits + string.ascii_uppercase
    bban = draw(st.text(alphabet, min_size=n, max_size=n))
    iban = _with_check(country, bban)
    if not valid:
        # one changed digit always breaks mod 97-10 (it catches every single substitution)
        i = draw(st.sampled_from([j for j in range(2, len(iban)) if iban[j].isdigit()]))
        wrong = draw(st.sampled_from([d for d in string.digits if d != iban[i]]))
        iban = iban[:i] + wrong + iban[i + 1:]
    if draw(st.booleans()):  # the printed form: groups of four
        iban = " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
    return iban


@SETTINGS
@given(ibans(valid=False))
def test_iban_with_a_broken_checksum_is_not_an_iban(value):
    assert kind_of(value, f"pay to {value} today") != "IBAN"


# -- phone numbers -------------------------------------------------------------------

# national significant number lengths (ITU-T E.164 plans) of some country codes
NATIONAL_LENGTHS = {"1": (10,), "44": (10,), "33": (9,), "49": (10, 11), "34": (9,),
                    "39": (9, 10), "91": (10,), "81": (9, 10), "61": (9,), "55": (10, 11),
                    "27": (9,), "353": (9,), "358": (9, 10), "971": (9,), "354": (7,)}


@st.composite
def phones(draw):
    cc = draw(st.sampled_from(sorted(NATIONAL_LENGTHS)))
    n = draw(st.sampled_from(NATIONAL_LENGTHS[cc]))
    national = str(draw(st.integers(1, 9))) + draw(st.text(string.digits, min_size=n - 1,
                                                           max_size=n - 1))
    groups, i = [], 0
    while i < n:  # chunks of 2 to 4 digits, as numbers are printed
        size = min(draw(st.integers(2, 4)), n - i)
        if n - i - size == 1:
            size += 1
        groups.append(national[i:i + size])
        i += size
    sep = draw(st.sampled_from([" ", "-", ".", ""]))
    style = draw(st.sampled_from(["plus", "zeros", "paren"]))
    if style == "paren" and len(groups) > 1:
        return f"+{cc} ({groups[0]}) " + (sep or " ").join(groups[1:])
    head = f"00{cc}" if style == "zeros" else f"+{cc}"
    sep = sep or ("" if style == "plus" else " ")  # 00 before bare digits: any long number
    return head + (sep or "") + sep.join(groups)


# -- national ids --------------------------------------------------------------------

_DNI = "TRWAGMYFPDXBNJZSQVHLCKE"


def _luhn_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


_VERHOEFF_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
               [2, 3, 4, 0, 1, 7, 8, 9, 5, 6], [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
               [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
               [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
               [8, 7, 6, 5, 9, 3, 2, 1, 0, 4], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VERHOEFF_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
               [5, 8, 0, 3, 7, 9, 6, 1, 4, 2], [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
               [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
               [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]
_VERHOEFF_INV = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9]


def _verhoeff_digit(body: str) -> str:
    c = 0
    for i, ch in enumerate(reversed(body)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[(i + 1) % 8][int(ch)]]
    return str(_VERHOEFF_INV[c])


@st.composite
def national_ids(draw):
    kind = draw(st.sampled_from(["ssn", "nino", "dni", "nie", "nir", "aadhaar", "sin"]))
    if kind == "ssn":
        area = draw(st.integers(1, 899).filter(lambda a: a != 666))
        return f"{area:03d}-{draw(st.integers(1, 99)):02d}-{draw(st.integers(1, 9999)):04d}"
    if kind == "nino":
        first, second = draw(st.tuples(st.sampled_from("ABCEGHJKLMNPRSTWXYZ"),
                                       st.sampled_from("ABCEGHJKLMNPRSTWXYZ")).filter(
            lambda p: "".join(p) not in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ")))
        nums = draw(st.text(string.digits, min_size=6, max_size=6))
        spaced = draw(st.booleans())
        body = " ".join([first + second, nums[:2], nums[2:4], nums[4:]]) if spaced \
            else first + second + nums
        return body + (" " if spaced else "") + draw(st.sampled_from("ABCD"))
    if kind == "dni":
        n = draw(st.integers(0, 99_999_999))
        return f"{n:08d}{_DNI[n % 23]}"
    if kind == "nie":
        lead = draw(st.integers(0, 2))
        n = draw(st.integers(0, 9_999_999))
        return f"{'XYZ'[lead]}{n:07d}{_DNI[int(f'{lead}{n:07d}') % 23]}"
    if kind == "nir":
        sex = draw(st.sampled_from("12"))
        body = (sex + f"{draw(st.integers(0, 99)):02d}{draw(st.integers(1, 12)):02d}"
                + f"{draw(st.integers(1, 95)):02d}"
                + draw(st.text(string.digits, min_size=6, max_size=6)))
        key = 97 - int(body) % 97
        return f"{body} {key:02d}" if draw(st.booleans()) else f"{body}{key:02d}"
    if kind == "aadhaar":
        body = str(draw(st.integers(2, 9))) + draw(st.text(string.digits, min_size=10,
                                                           max_size=10))
        full = body + _verhoeff_digit(body)
        return " ".join([full[:4], full[4:8], full[8:]])
    body = str(draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 9]))) + draw(
        st.text(string.digits, min_size=7, max_size=7))
    full = body + _luhn_digit(body)
    return "-".join([full[:3], full[3:6], full[6:]])  # Canadian SIN, printed 3-3-3


IN_TEXT = {  # what each strategy makes, and the kind the detector must give it
    "ipv4": (IPV4, "IP_ADDRESS"),
    "ipv6-any-form": (IPV6, "IP_ADDRESS"),
    "valid-iban": (ibans(), "IBAN"),
    "international-phone": (phones(), "PHONE"),
    "national-id": (national_ids(), "NATIONAL_ID"),
}


@pytest.mark.parametrize("name", sorted(IN_TEXT))
@SETTINGS
@given(data=st.data())
def test_found_in_any_position(name, data):
    values, kind = IN_TEXT[name]
    value, text = data.draw(embedded(values))
    assert_found(value, text, kind)


def test_a_number_after_a_number():
    """Counts and ids beside a number do not hide it, or swallow it."""
    assert kind_of("0044 20 7946 0958", "room 42 0044 20 7946 0958") == "PHONE"
    assert kind_of("0044 20 7946 0958", "42 42 0044 20 7946 0958") == "PHONE"
    # found by the property run: a double space before the number
    assert kind_of("001 10 000 00000", "42 42  001 10 000 00000") == "PHONE"
    assert kind_of("+1 415 555 0132", "+1 415 555 0132 42 times") == "PHONE"
    assert kind_of("4111 1111 1111 1111", "card 4111 1111 1111 1111 42") == "CARD"
    assert kind_of("DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00 42") == "IBAN"


def test_a_phone_with_a_bracketed_area_code_is_a_phone():
    """Found by the property above: the grouped digits after ``+49 (10)`` passed as a
    Canadian SIN (Luhn), which hid the phone number around them."""
    assert kind_of("+49 (10) 100 000 033", "+49 (10) 100 000 033") == "PHONE"
    assert kind_of("130 692 544", "my SIN (130 692 544) is") == "NATIONAL_ID"
