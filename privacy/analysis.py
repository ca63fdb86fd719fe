"""A chat body in; its private spans, and the rewrites each side may see, out.

``Analyzer`` runs the configured detectors; a detector that raises does not fail the
request here, it marks the analysis ``failed`` (the egress guard then lets nothing
out). ``Plan`` is one request's privacy: the local model's body (with the context), the
remote model's body (no context, placeholders) and the way back (restoration).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from privacy.detectors import Detector, Texts
from privacy.redact import Redactor, StreamRestorer
from privacy.request import (
    Marks,
    has_user_text,
    local_body,
    open_texts,
    read_marks,
    remote_body,
)
from privacy.spans import Span

log = logging.getLogger("tandem.privacy")


@dataclass
class Plan:
    marks: Marks
    marked: list[str]
    spans: list[Span]
    failed: str | None = None
    state: object = None  # the request's EgressState (privacy/guard.py), set by the stage

    def __post_init__(self) -> None:
        self.redactor = Redactor(self.spans, self.marked)

    @property
    def private(self) -> bool:
        """Anything to protect (or detection failed, so assume there is)."""
        return bool(self.spans or self.marked or self.failed)

    def local(self, body: dict) -> dict:
        return local_body(body, self.marks)

    def remote(self, body: dict) -> dict:
        """No context, no private message, placeholders for every private span."""
        out = remote_body(body, self.marks, self.redactor.redact)
        note = self.redactor.note()
        if note:
            out["messages"] = [{"role": "system", "content": note}, *out["messages"]]
        return out

    def remote_has_instruction(self, body: dict) -> bool:
        return has_user_text(remote_body(body, self.marks, lambda s: s))

    def restore(self, text: str) -> str:
        return self.redactor.restore(text)

    def restorer(self, escape=None) -> StreamRestorer:
        return self.redactor.restorer(escape)


class Analyzer:
    def __init__(self, detectors: list[Detector]) -> None:
        self.detectors = detectors

    def start(self) -> None:
        """Load what detectors need (blocking: call from a worker thread)."""
        for d in self.detectors:
            d.start()

    def analyse(self, body: dict, memory=None) -> Plan:
        """Raises ``InvalidRequest`` for malformed marks; detector errors set ``failed``.
        ``memory`` (privacy.memory.Recalled) is what earlier requests showed private."""
        marks = read_marks(body)
        marked = [t for t in marks.marked_texts(body) if t.strip()]
        texts = Texts(marked, open_texts(body, marks), memory)
        spans: list[Span] = []
        failed = None
        for d in self.detectors:
            try:
                spans.extend(d.detect(texts))
            except Exception as err:  # fail closed, and say which detector (no content)
                log.error("detector %s failed: %s", d.name, type(err).__name__)
                failed = f"detector '{d.name}' raised {type(err).__name__}"
        if marked and not any(s.source == "marked" for s in spans):
            spans.extend(Span(t, "CONTEXT", "marked") for t in marked)  # marks always count
        return Plan(marks, marked, _dedupe(spans), failed)


def _dedupe(spans: list[Span]) -> list[Span]:
    seen: set[tuple[str, str]] = set()
    out = []
    for s in spans:
        key = (s.kind, s.text)
        if key not in seen and s.text.strip():
            seen.add(key)
            out.append(s)
    return out
