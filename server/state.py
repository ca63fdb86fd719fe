"""Shared counters for limits and budgets: embedded SQLite, or Redis for several replicas.

Two operations cover rate limits and budgets: add to a counter that lives for one
fixed window (requests or tokens per minute), and add to a counter that never expires
(spend). Both return the new total, so a check and its increment are one round trip.
"""

from __future__ import annotations

import abc
import asyncio
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

    async def close(self) -> None:
        """Release connections."""


def _window(window_s: int) -> tuple[int, float]:
    now = time.time()
    start = int(now // window_s) * window_s
    return start, start + window_s - now


class SQLiteState(StateStore):
    """One file, one writer thread (sqlite3 connections are not shared across threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-state")
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, "
                       "value REAL NOT NULL, expires REAL)")
            self._local.db = db
        return db

    def _add(self, key: str, amount: float, expires: float | None) -> float:
        db = self._db()
        now = time.time()
        db.execute("DELETE FROM counters WHERE expires IS NOT NULL AND expires < ?", (now,))
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

    async def close(self) -> None:
        await self._redis.aclose()
