"""Typed placeholders for private spans, and their exact restoration, also in streams.

``Redactor.redact`` replaces each private span with ``<KIND_n>`` (the same span always
gets the same placeholder); ``restore`` puts the originals back. ``StreamRestorer``
does the same on a stream of text pieces: a piece that ends inside a possible
placeholder (``"Dear <PER"``) is held back until the next piece decides, so the caller
never sees a half placeholder and restoration is exact wherever the chunks split.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from privacy.spans import Span, normalise

_DIGIT_KINDS = frozenset({"PHONE", "CARD", "IBAN", "NATIONAL_ID"})


def _span_pattern(span: Span) -> str:
    """The span as a regex that tolerates case, whitespace and digit separators."""
    text = span.text.strip()
    if span.kind in _DIGIT_KINDS:
        return r"[\s.()/-]*".join(re.escape(c) for c in re.sub(r"[\s.()/-]", "", text))
    return r"\s+".join(re.escape(part) for part in text.split())


class Redactor:
    """Placeholders for one request's spans."""

    def __init__(self, spans: list[Span], marked: list[str]) -> None:
        self.originals: dict[str, str] = {}  # placeholder name -> original text
        by_norm: dict[str, str] = {}
        counts: dict[str, int] = {}
        patterns: list[tuple[str, str]] = []
        for span in sorted(spans, key=lambda s: -len(s.text)):
            key = normalise(span.text)
            if not key or key in by_norm:
                continue
            counts[span.kind] = counts.get(span.kind, 0) + 1
            name = f"{span.kind}_{counts[span.kind]}"
            by_norm[key] = name
            self.originals[name] = span.text.strip()
            patterns.append((name, _span_pattern(span)))
        self._names = {f"g{i}": name for i, (name, _) in enumerate(patterns)}
        self._find = re.compile("|".join(f"(?P<g{i}>{p})" for i, (_, p) in enumerate(patterns)),
                                re.IGNORECASE) if patterns else None
        # Values found inside the private context: the remote model may refer to them.
        self.declared: list[tuple[str, str]] = []
        for name, original in self.originals.items():
            kind = name.rsplit("_", 1)[0]
            if kind not in ("CONTEXT", "PRIVATE") and any(original in t for t in marked):
                self.declared.append((name, kind))

    def redact(self, text: str) -> str:
        if self._find is None:
            return text
        return self._find.sub(lambda m: f"<{self._names[m.lastgroup]}>", text)

    def note(self) -> str | None:
        """A system note telling the remote model which placeholders it may use."""
        if not self.declared:
            return None
        listed = ", ".join(f"<{name}> (a {kind.lower().replace('_', ' ')})"
                           for name, kind in self.declared)
        return ("Some private values are replaced by placeholders; the user's device fills "
                f"them in. Write a placeholder exactly as given where its value belongs: {listed}.")

    def restorer(self, escape: Callable[[str], str] | None = None) -> "StreamRestorer":
        return StreamRestorer(self.originals, escape)

    def restore(self, text: str, escape: Callable[[str], str] | None = None) -> str:
        r = self.restorer(escape)
        return r.feed(text) + r.flush()


def json_escape(text: str) -> str:
    """For placeholders inside JSON strings (tool-call arguments)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


class StreamRestorer:
    """Restores placeholders in a stream of pieces, holding back undecided tails."""

    def __init__(self, originals: dict[str, str],
                 escape: Callable[[str], str] | None = None) -> None:
        self.originals = originals
        self.escape = escape or (lambda s: s)
        self._buf = ""
        names = sorted(originals, key=len, reverse=True)
        # "<PERSON_1>" and, as small models often drop the brackets, a bare "PERSON_1".
        self._find = re.compile(r"<?\b(" + "|".join(map(re.escape, names)) + r")\b>?") \
            if names else None
        self._forms = [f"<{n}>" for n in names] + [f"{n}>" for n in names]

    def _sub(self, text: str) -> str:
        if self._find is None:
            return text
        return self._find.sub(lambda m: self.escape(self.originals[m.group(1)]), text)

    def _held(self) -> int:
        """Length of the longest tail that is a proper beginning of a placeholder."""
        buf = self._buf
        for k in range(min(len(buf), max((len(f) for f in self._forms), default=0)), 0, -1):
            tail = buf[-k:]
            if any(f.startswith(tail) and f != tail for f in self._forms):
                return k
        return 0

    def feed(self, piece: str) -> str:
        self._buf += piece
        k = self._held()
        ready, self._buf = (self._buf[:-k], self._buf[-k:]) if k else (self._buf, "")
        return self._sub(ready)

    def flush(self) -> str:
        out, self._buf = self._sub(self._buf), ""
        return out
