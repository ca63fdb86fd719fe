"""The egress guard: the last check of every byte bound for a remote upstream.

Each request runs with an ``EgressState`` in a context variable (set by the chat
service, inherited by every task of the request). ``check_egress`` is called by the one
send path of remote backends (``OpenAIClient.post``) with the exact payload: it blocks
when the payload contains a private span (after normalising case, whitespace and
Unicode, and comparing numbers without separators) or shares a private run of words
with the marked context (privacy/overlap.py). It fails closed: a request whose
detection failed sends nothing, and a check that raises blocks. Reasons carry span
kinds and hashes, never the spans.
"""

from __future__ import annotations

import re
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Callable, Iterator

import orjson

from clients.errors import UpstreamError
from privacy.audit import AuditStore, EgressRecord
from privacy.overlap import ContextIndex
from privacy.spans import Span, digits, normalise

MIN_DIGITS = 6  # numbers at least this long are also compared without separators
_NUMBER_RUN = re.compile(r"\d[\d\s.()/+-]*\d")


class EgressBlocked(UpstreamError):
    """A request that would have sent private data (or could not be checked)."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message, status=403, retryable=retryable, code="egress_blocked",
                         type="permission_error", headers={"x-tandem-privacy": "blocked"})


class _Matcher:
    """Span needles (normal form, digits) and the context's word runs."""

    def __init__(self, spans: list[Span], marked: list[str]) -> None:
        self.kinds: dict[str, Span] = {}
        parts = []
        self.numbers: dict[str, Span] = {}
        for span in spans:
            norm = normalise(span.text)
            if norm and norm not in self.kinds:
                self.kinds[norm] = span
                left = r"(?<!\w)" if norm[0].isalnum() else ""
                right = r"(?!\w)" if norm[-1].isalnum() else ""
                parts.append(left + re.escape(norm) + right)
            d = digits(span.text)
            if len(d) >= MIN_DIGITS:
                self.numbers.setdefault(d, span)
        parts.sort(key=len, reverse=True)
        self.needles = re.compile("|".join(parts)) if parts else None
        self.index = ContextIndex(marked)

    def hit(self, text: str, runs: bool) -> str | None:
        norm = normalise(text)
        if self.needles is not None:
            m = self.needles.search(norm)
            if m:
                span = self.kinds.get(m.group())
                kind = span.kind if span else "SPAN"
                return f"{kind} span sha256:{span.fingerprint if span else '?'}"
        if self.numbers:
            for run in _NUMBER_RUN.findall(norm):
                d = digits(run)
                for needle, span in self.numbers.items():
                    if needle in d:
                        return f"{span.kind} number sha256:{span.fingerprint}"
        if runs and self.index and self.index.shared(text):
            return "words shared with the private context"
        return None


def _strings(obj) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


@dataclass
class EgressState:
    """One request's privacy facts, as the guard needs them."""

    request_id: str
    spans: list[Span]
    marked: list[str]
    failed: str | None = None  # why detection failed; then nothing may leave
    fallback_local: bool = False  # a block hands over to the next (local) model
    owner: str | None = None  # API key name: who may read the audit record
    audit: AuditStore | None = None
    on_block: Callable[[str], None] | None = None
    _matcher: _Matcher | None = field(default=None, repr=False)

    def _block(self, upstream: str, url: str, reason: str, label: str) -> EgressBlocked:
        if self.audit is not None:
            self.audit.add(self.request_id, self.owner,
                           EgressRecord(upstream, url, time.time(), None, reason))
        if self.on_block is not None:
            self.on_block(label)
        return EgressBlocked(f"Request blocked before it left for upstream '{upstream}': "
                             f"{reason}", retryable=self.fallback_local)

    def check(self, upstream: str, url: str, payload: bytes) -> None:
        if self.failed is not None:
            raise self._block(upstream, url, f"private-data detection failed ({self.failed})",
                              "detection_failed")
        try:
            reason = self._find(payload)
        except Exception as err:  # fail closed: an unchecked payload never leaves
            raise self._block(upstream, url, f"egress check failed ({type(err).__name__})",
                              "check_failed") from None
        if reason is not None:
            raise self._block(upstream, url, f"it contained private data ({reason})", "span")
        if self.audit is not None:
            self.audit.add(self.request_id, self.owner, EgressRecord(
                upstream, url, time.time(), payload.decode("utf-8", "replace")))

    def _find(self, payload: bytes) -> str | None:
        if not self.spans and not self.marked:
            return None
        if self._matcher is None:
            self._matcher = _Matcher(self.spans, self.marked)
        text = payload.decode("utf-8", "replace")
        reason = self._matcher.hit(text, runs=False)  # raw bytes, whatever the format
        if reason is None:
            try:
                strings = list(_strings(orjson.loads(payload)))
            except orjson.JSONDecodeError:
                strings = [text]
            for s in strings:  # decoded JSON strings: escapes undone, one text at a time
                reason = self._matcher.hit(s, runs=True)
                if reason is not None:
                    break
        return reason


_CURRENT: ContextVar[EgressState | None] = ContextVar("tandem_egress_state", default=None)


def activate(state: EgressState | None) -> Token:
    """Make ``state`` the current request's (for this task and the tasks it starts)."""
    return _CURRENT.set(state)


def current() -> EgressState | None:
    return _CURRENT.get()


def check_egress(upstream: str, url: str, payload: bytes) -> None:
    """Raise ``EgressBlocked`` unless ``payload`` may leave for ``upstream``.

    Outside a gateway request (CLI tools, benchmarks) there is nothing to protect."""
    state = _CURRENT.get()
    if state is not None:
        state.check(upstream, url, payload)
