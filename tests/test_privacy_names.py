"""The default ``names`` detector: people, organisations and places in free text, found
by capitalisation and the census first names; ordinary requests and code left alone; a
name list that does not match its checksum fails detection closed."""

from __future__ import annotations

import pytest

from privacy import names
from privacy.analysis import Analyzer
from privacy.detectors import Texts, build_detector


@pytest.fixture(scope="module")
def detector():
    d = build_detector("names")
    d.start()
    return d


def found(detector, text: str) -> dict[str, str]:
    return {s.text: s.kind for s in detector.detect(Texts([], [text]))}


@pytest.mark.parametrize("text,expected", [
    ("write to my colleague Dana Whitfield at Northwind Traders",
     {"Dana Whitfield": "PERSON", "Northwind Traders": "ORG"}),
    ("Northwind Traders is late again.", {"Northwind Traders": "ORG"}),  # sentence start
    ("Dana asked me to review the slides.", {"Dana": "PERSON"}),  # a census first name
    ("Translate: Vesna Korlat joins in May.", {"Vesna Korlat": "NAME"}),
    ("Dear Dr. Okafor, thanks.", {"Okafor": "PERSON"}),
    ("J. R. R. Tolkien wrote it", {"Tolkien": "NAME"}),  # initials alone name no one
    ("send it to Bank of the West on Main Street", {"Bank of the West": "NAME",
                                                    "Main Street": "PLACE"}),
    ("offer from Fennwick & Sons", {"Fennwick & Sons": "ORG"}),
    ("Meet Zoltan Kovacs and Aiko Tanaka at noon",
     {"Zoltan Kovacs": "NAME", "Aiko Tanaka": "PERSON"}),
    ("Meeting notes:\n- Björn Lindqvist owns it\n- Anne-Sophie Delacroix reviews",
     {"Björn Lindqvist": "NAME", "Anne-Sophie Delacroix": "NAME"}),
    ("cc: Małgorzata Wiśniewska", {"Małgorzata Wiśniewska": "NAME"}),
    ("a flat in Quimper", {"Quimper": "NAME"}),
    ("ask ACME Corp", {"ACME Corp": "ORG"}),
])
def test_names_are_found(detector, text, expected):
    assert found(detector, text) == expected


@pytest.mark.parametrize("text", [
    "Write a Python function that parses JSON.",
    "Explain how an LSTM differs from a GRU on a GPU.",
    "What is 2 plus 2? Option B. I think Monday works.",
    "Which is true?\nA. It rains\nB. False\nD. All of the above",
    "URGENT: PLEASE HELP ME WITH SQL",
    "def add(a, b):\n    return a + b  # TODO: Check types",
    "Create a list of five fruits. Then sort it.",
    "Hello! Thanks for the help yesterday.",
    "send dana whitfield the minutes",  # lower case: a known miss, documented
])
def test_ordinary_requests_are_left_alone(detector, text):
    assert found(detector, text) == {}


def test_marked_texts_are_not_read(detector):
    """Marked context is private whole already; only the texts that could leave are read."""
    assert detector.detect(Texts(["Dana Whitfield"], ["hello there"])) == []


def test_a_name_list_that_fails_its_checksum_fails_detection(monkeypatch):
    monkeypatch.setitem(names.NAME_FILES, "names/dist.male.first", "0" * 64)
    analyzer = Analyzer([build_detector("marked"), build_detector("names")])
    with pytest.raises(ValueError, match="SHA-256"):
        analyzer.start()
    plan = analyzer.analyse({"messages": [{"role": "user", "content": "Plan a trip."}]})
    assert plan.failed  # the egress guard blocks (or the local model answers): fail closed
