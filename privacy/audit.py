"""What left the machine, per request: for ``GET /v1/tandem/egress/{request_id}``.

Only payloads that passed the egress guard are stored (so never a private span); a
blocked attempt is stored as its reason with span hashes. Bounded in time (``ttl_s``),
number of requests and bytes: the oldest requests go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class EgressRecord:
    upstream: str
    url: str
    at: float
    payload: str | None  # the exact bytes sent (UTF-8), None when blocked
    blocked: str | None = None  # why it was blocked (hashes only)

    def to_json(self) -> dict:
        return {"upstream": self.upstream, "url": self.url, "at": round(self.at, 3),
                "blocked": self.blocked is not None, "reason": self.blocked,
                "payload": self.payload}


@dataclass
class _Entry:
    owner: str | None
    created: float
    records: list[EgressRecord] = field(default_factory=list)
    size: int = 0


class AuditStore:
    def __init__(self, ttl_s: float = 3600.0, max_requests: int = 10_000,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        self.ttl_s = ttl_s
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0

    def add(self, request_id: str, owner: str | None, record: EgressRecord) -> None:
        now = time.time()
        entry = self._entries.get(request_id)
        if entry is None:
            entry = self._entries[request_id] = _Entry(owner, now)
        size = len(record.payload or "") + len(record.url) + 64
        entry.records.append(record)
        entry.size += size
        self._bytes += size
        self._evict(now)

    def get(self, request_id: str, owner: str | None) -> list[EgressRecord] | None:
        """The records of one request; None when unknown, expired or someone else's."""
        self._evict(time.time())
        entry = self._entries.get(request_id)
        if entry is None or (entry.owner is not None and entry.owner != owner):
            return None
        return list(entry.records)

    def _evict(self, now: float) -> None:
        while self._entries:
            rid, entry = next(iter(self._entries.items()))
            if (now - entry.created <= self.ttl_s and len(self._entries) <= self.max_requests
                    and self._bytes <= self.max_bytes):
                return
            del self._entries[rid]
            self._bytes -= entry.size
