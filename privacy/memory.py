"""Sticky privacy: what one request showed to be private stays private afterwards.

A chat UI re-sends the whole history on every turn, undeclared: the local model's answer
to a private turn (holding a name, an e-mail address, a project code) comes back as an
ordinary assistant message. A stateless check cannot know; the gateway remembers.

After a request with private spans, their fingerprints are stored in the state store
(SQLite, or Redis so replicas share them; in-process when neither is configured) under
every scope the request belongs to; before the next request is analysed, the
fingerprints of its scopes are recalled and the ``remembered`` detector marks any run of
words in it that has one. The spans it finds are private like any other: the mode
rewrites them and the egress guard checks every byte against them.

- **Fingerprints, never text**: keyed BLAKE2b (8 bytes) of a span's normal form (its
  words, NFKC and case-folded); a salt generated on first use lives in the store. For
  marked context, also identifier-like tokens (letters with digits: project codes,
  account numbers), capitalised words inside sentences (names, places, organisations:
  over-protecting an ordinary capitalised word is the safe side) and every 6-word run,
  so that re-sent context is caught.
- **Scopes** (``privacy.memory.scope``): ``key`` (the default) remembers for the API key,
  across all its conversations (no keys configured: the whole gateway, one user);
  ``conversation`` remembers per conversation only: the body's ``conversation_id`` (or
  ``metadata.conversation_id``), the OpenAI ``user`` field, and the history's first
  user message (the same on every turn of one chat). Both are per key.
- **Lifetime**: ``privacy.memory.ttl_s`` (default one day) from the request that taught
  it; ``POST /v1/tandem/privacy/forget`` drops a key's memory (or one conversation's).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field

import orjson

from privacy.detectors import Detector, Texts, register_detector
from privacy.memo import TextMemo
from privacy.spans import STOPWORDS, Span, normalise

_WORD = re.compile(r"\w+")
_IDENTIFIER = re.compile(r"(?=[\w.-]*\d)(?=[\w.-]*[A-Za-z])[A-Za-z0-9][\w.-]{3,}")
# A capitalised word inside a sentence (not after . ! ? or a line start): a proper noun.
_PROPER = re.compile(r"(?<![.!?]\s)(?<![.!?]\s\s)(?<!^)(?<!\n)\b[A-Z][a-z\u00C0-\u024F]{2,}\b")
MAX_SPAN_WORDS = 12  # longer spans are remembered as their 6-word runs
RUN = 6
MAX_PER_REQUEST = 4000  # fingerprints one request may add
READ_LAST = 500  # entries of a scope read back (newest)


def words(text: str) -> list[tuple[int, int, str]]:
    """(start, end, normal form) of each word of ``text``, offsets in ``text``."""
    return [(m.start(), m.end(), normalise(m.group())) for m in _WORD.finditer(text)]


@dataclass
class Recalled:
    """Fingerprints by run length, and the key that made them."""

    salt: bytes
    by_length: dict[int, set[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.by_length.values())

    def fingerprint(self, normal_words: list[str]) -> str:
        return _fp(self.salt, normal_words)


def _fp(salt: bytes, normal_words: list[str]) -> str:
    return hashlib.blake2b(" ".join(normal_words).encode(), key=salt, digest_size=8).hexdigest()


def fingerprints(salt: bytes, spans: list[Span], marked: list[str]) -> dict[int, set[str]]:
    """What a request's private spans and marked context leave behind."""
    out: dict[int, set[str]] = {}

    def add(ws: list[str]) -> None:
        if ws:
            out.setdefault(len(ws), set()).add(_fp(salt, ws))

    def runs(ws: list[str]) -> None:
        for i in range(max(1, len(ws) - RUN + 1)):
            add(ws[i:i + RUN])

    for span in spans:
        ws = [w for _, _, w in words(span.text)]
        if span.kind == "CONTEXT" or len(ws) > MAX_SPAN_WORDS:
            runs(ws)
        else:
            add(ws)
    for text in marked:
        runs([w for _, _, w in words(text)])
        for m in _IDENTIFIER.finditer(text):
            add([w for _, _, w in words(m.group())])
        for m in _PROPER.finditer(text):
            if normalise(m.group()) not in STOPWORDS:
                add([normalise(m.group())])
    return out


@register_detector("remembered")
class RememberedDetector(Detector):
    """Runs of words whose fingerprints an earlier private request left (memory.py)."""

    name = "remembered"

    def __init__(self) -> None:
        self.memo: TextMemo[tuple[tuple[str, int, int], ...]] = TextMemo()

    def detect(self, texts: Texts) -> list[Span]:
        memory: Recalled | None = texts.memory
        if not memory:
            return []
        spans = []
        for text in texts.open:
            for n, known in memory.by_length.items():
                # a run's fingerprint depends on the text, the run length and the key's
                # salt alone: a history resent turn after turn is hashed once
                runs = self.memo.get(f"{memory.salt.hex()}:{n}:{text}",
                                      lambda _, text=text, n=n: _runs(memory.salt, text, n))
                spans += [Span(text[a:b], "REMEMBERED", self.name)
                          for fp, a, b in runs if fp in known]
        return spans


def _runs(salt: bytes, text: str, n: int) -> tuple[tuple[str, int, int], ...]:
    """(fingerprint, start, end) of every run of ``n`` words in ``text``."""
    ws = words(text)
    normal = [w for _, _, w in ws]
    return tuple((_fp(salt, normal[i:i + n]), ws[i][0], ws[i + n - 1][1])
                 for i in range(len(ws) - n + 1))


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:24]


class PrivacyMemory:
    """The store side: scopes of a request, recall, remember, forget."""

    def __init__(self, store, ttl_s: float, scope: str) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.scope = scope
        self._salt: bytes | None = None

    async def salt(self) -> bytes:
        if self._salt is None:
            stored = await self.store.get("privacy:salt")
            if stored is None:
                fresh = os.urandom(32)
                await self.store.put("privacy:salt", fresh, 10 * 365 * 86400.0)
                stored = await self.store.get("privacy:salt") or fresh
            self._salt = stored
        return self._salt

    @staticmethod
    def owner(key) -> str:
        return getattr(key, "key_sha256", None)[:16] if getattr(key, "key_sha256", None) \
            else "anonymous"

    def scopes(self, body: dict, key) -> list[str]:
        owner = self.owner(key)
        if self.scope == "key":
            return [f"key:{owner}"]
        out = []
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        cid = body.get("conversation_id") or meta.get("conversation_id")
        if isinstance(cid, str) and cid:
            out.append(f"conv:{owner}:{_hash(cid)}")
        if isinstance(body.get("user"), str) and body["user"]:
            out.append(f"user:{owner}:{_hash(body['user'])}")
        first = next((m for m in body.get("messages") or []
                      if isinstance(m, dict) and m.get("role") == "user"), None)
        if first is not None:
            out.append(f"root:{owner}:{_hash(normalise(str(first.get('content') or '')))}")
        return out

    async def recall(self, scopes: list[str], owner: str) -> Recalled:
        salt = await self.salt()
        now = time.time()
        forgot = await self.store.get(f"privacy:forgot:{owner}")
        since = float(forgot.decode()) if forgot else 0.0
        recalled = Recalled(salt)
        for scope in scopes:
            forgot_scope = await self.store.get(f"privacy:forgot:{scope}")
            after = max(since, float(forgot_scope.decode()) if forgot_scope else 0.0)
            entries = await self.store.read(f"privacy:mem:{scope}")
            for raw in entries[-READ_LAST:]:
                entry = orjson.loads(raw)
                if entry["exp"] < now or entry["at"] <= after:
                    continue
                for n, fps in entry["fp"].items():
                    recalled.by_length.setdefault(int(n), set()).update(fps)
        return recalled

    async def remember(self, scopes: list[str], spans: list[Span], marked: list[str]) -> int:
        fps = fingerprints(await self.salt(), spans, marked)
        kept, budget = {}, MAX_PER_REQUEST
        for n in sorted(fps):
            take = sorted(fps[n])[:budget]
            budget -= len(take)
            if take:
                kept[str(n)] = take
        if not kept:
            return 0
        now = time.time()
        entry = orjson.dumps({"at": now, "exp": now + self.ttl_s, "fp": kept})
        for scope in scopes:
            await self.store.append(f"privacy:mem:{scope}", entry)
        return sum(len(v) for v in kept.values())

    async def forget(self, owner: str, conversation_id: str | None = None) -> None:
        target = (f"privacy:forgot:conv:{owner}:{_hash(conversation_id)}" if conversation_id
                  else f"privacy:forgot:{owner}")
        # A slightly later stamp than now: entries written in this same instant go too.
        await self.store.put(target, str(time.time() + 1e-3).encode(), 10 * 365 * 86400.0)
