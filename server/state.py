"""Shared state for limits, budgets and router learning: embedded SQLite, or Redis for
several replicas.

Two operations cover rate limits and budgets: add to a counter that lives for one
fixed window (requests or tokens per minute), and add to a counter that never expires
(spend). Both return the new total, so a check and its increment are one round trip.
Router learning adds blobs with a time to live (what a response was, for its feedback)
and append-only lists (the labels), which every replica on the same store shares.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class StateStore(abc.ABC):
    @abc.abstractmethod
    async def add_window(self, key: str, amount: float, window_s: int) -> tuple[float, float]:
        """Add to ``key`` in the current window; (new total, seconds until it resets)."""

    @abc.abstractmethod
    async def add_total(self, key: str, amount: float) -> float:
        """Add to a counter that never resets; the new total (amount 0 reads it)."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The stored value, or None when absent or expired."""

    @abc.abstractmethod
    async def append(self, key: str, value: bytes) -> int:
        """Append to the list ``key``; its new length."""

    @abc.abstractmethod
    async def read(self, key: str, start: int = 0) -> list[bytes]:
        """The list ``key`` from index ``start`` on."""

    async def length(self, key: str) -> int:
        return len(await self.read(key))

    async def close(self) -> None:
        """Release connections."""


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection):
    """BEGIN IMMEDIATE … COMMIT (the connection is in autocommit mode): the statements
    inside happen together, for every process on the file."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _window(window_s: int) -> tuple[int, float]:
    now = time.time()
    start = int(now // window_s) * window_s
    return start, start + window_s - now


class MemoryState(StateStore):
    """In-process state for one gateway (sticky privacy when no store is configured):
    nothing is shared, nothing survives a restart."""

    def __init__(self) -> None:
        self._counters: dict[str, tuple[float, float]] = {}
        self._blobs: dict[str, tuple[bytes, float]] = {}
        self._lists: dict[str, list[bytes]] = {}

    async def add_window(self, key: str, amount: float, window_s: int) -> tuple[float, float]:
        start, left = _window(window_s)
        total, at = self._counters.get(key, (0.0, start))
        total = (total if at == start else 0.0) + amount
        self._counters[key] = (total, start)
        return total, left

    async def add_total(self, key: str, amount: float) -> float:
        total = self._counters.get(key, (0.0, 0.0))[0] + amount
        self._counters[key] = (total, 0.0)
        return total

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._blobs[key] = (value, time.time() + ttl_s)

    async def get(self, key: str) -> bytes | None:
        value, expires = self._blobs.get(key, (None, 0.0))
        return value if value is not None and expires > time.time() else None

    async def append(self, key: str, value: bytes) -> int:
        self._lists.setdefault(key, []).append(value)
        return len(self._lists[key])

    async def read(self, key: str, start: int = 0) -> list[bytes]:
        return list(self._lists.get(key, [])[start:])


class SQLiteState(StateStore):
    """One file, one writer thread (sqlite3 connections are not shared across threads).

    Every operation costs the same however many rows the file holds: expired rows are
    swept through an index at most once per ``SWEEP_S`` (not scanned on every write: a
    learning gateway keeps one blob per routed response for a week, and a full scan per
    write grew to 15 ms at 20,000 blobs, on the one thread every state operation waits
    for), and list lengths are kept beside the lists."""

    SWEEP_S = 1.0

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-state")
        self._local = threading.local()
        self._swept = 0.0

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, "
                       "value REAL NOT NULL, expires REAL)")
            db.execute("CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, "
                       "value BLOB NOT NULL, expires REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS lists (seq INTEGER PRIMARY KEY "
                       "AUTOINCREMENT, key TEXT NOT NULL, value BLOB NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS lists_key ON lists (key, seq)")
            db.execute("CREATE INDEX IF NOT EXISTS blobs_expires ON blobs (expires)")
            db.execute("CREATE INDEX IF NOT EXISTS counters_expires ON counters (expires)")
            with _transaction(db):
                db.execute("CREATE TABLE IF NOT EXISTS list_lengths (key TEXT PRIMARY KEY, "
                           "n INTEGER NOT NULL)")
                if db.execute("SELECT 1 FROM list_lengths LIMIT 1").fetchone() is None:
                    # a file from before the lengths were kept: count once
                    db.execute("INSERT INTO list_lengths (key, n) "
                               "SELECT key, COUNT(*) FROM lists GROUP BY key")
            self._local.db = db
        return db

    def _sweep(self, db: sqlite3.Connection) -> None:
        """Drop expired counters and blobs (reads already skip them), at most once per
        ``SWEEP_S``."""
        now = time.time()
        if now - self._swept < self.SWEEP_S:
            return
        self._swept = now
        db.execute("DELETE FROM counters WHERE expires IS NOT NULL AND expires < ?", (now,))
        db.execute("DELETE FROM blobs WHERE expires < ?", (now,))

    def _add(self, key: str, amount: float, expires: float | None) -> float:
        db = self._db()
        self._sweep(db)
        row = db.execute(
            "INSERT INTO counters (key, value, expires) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value RETURNING value",
            (key, amount, expires)).fetchone()
        return float(row[0])

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def add_window(self, key: str, amount: float, window_s: int) -> tuple[float, float]:
        start, left = _window(window_s)
        total = await self._run(self._add, f"{key}@{start}", amount, start + window_s + 1)
        return total, left

    async def add_total(self, key: str, amount: float) -> float:
        return await self._run(self._add, key, amount, None)

    def _put(self, key: str, value: bytes, ttl_s: float) -> None:
        db = self._db()
        self._sweep(db)
        db.execute("INSERT OR REPLACE INTO blobs (key, value, expires) VALUES (?, ?, ?)",
                   (key, value, time.time() + ttl_s))

    def _get(self, key: str) -> bytes | None:
        row = self._db().execute("SELECT value FROM blobs WHERE key = ? AND expires >= ?",
                                 (key, time.time())).fetchone()
        return None if row is None else bytes(row[0])

    def _append(self, key: str, value: bytes) -> int:
        db = self._db()
        with _transaction(db):
            db.execute("INSERT INTO lists (key, value) VALUES (?, ?)", (key, value))
            return int(db.execute(
                "INSERT INTO list_lengths (key, n) VALUES (?, 1) ON CONFLICT(key) "
                "DO UPDATE SET n = n + 1 RETURNING n", (key,)).fetchone()[0])

    def _read(self, key: str, start: int) -> list[bytes]:
        rows = self._db().execute("SELECT value FROM lists WHERE key = ? ORDER BY seq "
                                  "LIMIT -1 OFFSET ?", (key, start)).fetchall()
        return [bytes(r[0]) for r in rows]

    def _length(self, key: str) -> int:
        row = self._db().execute("SELECT n FROM list_lengths WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._run(self._put, key, value, ttl_s)

    async def get(self, key: str) -> bytes | None:
        return await self._run(self._get, key)

    async def append(self, key: str, value: bytes) -> int:
        return await self._run(self._append, key, value)

    async def read(self, key: str, start: int = 0) -> list[bytes]:
        return await self._run(self._read, key, start)

    async def length(self, key: str) -> int:
        return await self._run(self._length, key)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)


class RedisState(StateStore):
    """Counters in Redis: every replica pointed at the same URL enforces the same limits."""

    def __init__(self, url: str, prefix: str = "tandem:") -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self.prefix = prefix

    async def add_window(self, key: str, amount: float, window_s: int) -> tuple[float, float]:
        start, left = _window(window_s)
        k = f"{self.prefix}{key}@{start}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(k, amount)
            pipe.expire(k, window_s + 1)
            total, _ = await pipe.execute()
        return float(total), left

    async def add_total(self, key: str, amount: float) -> float:
        return float(await self._redis.incrbyfloat(f"{self.prefix}{key}", amount))

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._redis.set(f"{self.prefix}{key}", value, px=max(1, int(ttl_s * 1000)))

    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(f"{self.prefix}{key}")

    async def append(self, key: str, value: bytes) -> int:
        return int(await self._redis.rpush(f"{self.prefix}{key}", value))

    async def read(self, key: str, start: int = 0) -> list[bytes]:
        return list(await self._redis.lrange(f"{self.prefix}{key}", start, -1))

    async def length(self, key: str) -> int:
        return int(await self._redis.llen(f"{self.prefix}{key}"))

    async def close(self) -> None:
        await self._redis.aclose()
