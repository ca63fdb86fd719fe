"""server/state.py: the three stores answer the same (lists, lengths, blobs with a time
to live), and the SQLite file stays cheap to write as it fills (an index-backed sweep,
lengths kept beside the lists)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from server.state import MemoryState, RedisState, SQLiteState
from tests.support.redis_server import redis_server


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryState()
    elif request.param == "sqlite":
        yield SQLiteState(tmp_path / "state.sqlite")
    else:
        with redis_server() as url:
            yield RedisState(url, prefix=f"test{time.monotonic_ns()}:")


def test_lists_and_lengths_and_blobs_agree(store):
    async def run():
        assert await store.length("labels") == 0
        assert [await store.append("labels", f"{i}".encode()) for i in range(5)] == [1, 2, 3, 4, 5]
        await store.append("other", b"x")
        assert await store.length("labels") == 5 and await store.length("other") == 1
        assert await store.read("labels", 3) == [b"3", b"4"]
        await store.put("live", b"yes", 60)
        await store.put("gone", b"no", 0.05)
        await asyncio.sleep(0.1)
        assert await store.get("live") == b"yes" and await store.get("gone") is None
        await store.close()

    asyncio.run(run())


def test_sqlite_sweeps_expired_rows_and_reads_still_skip_them(tmp_path):
    path = tmp_path / "state.sqlite"
    store = SQLiteState(path)
    store.SWEEP_S = 0.0  # sweep on every write

    async def run():
        await store.put("short", b"1", 0.05)
        await store.add_window("rpm", 1, 1)
        await asyncio.sleep(2.1)  # past the blob's ttl and the counter's window end + 1 s
        assert await store.get("short") is None
        await store.put("keep", b"2", 60)
        await store.close()

    asyncio.run(run())
    db = sqlite3.connect(path)
    assert [k for (k,) in db.execute("SELECT key FROM blobs")] == ["keep"]
    assert db.execute("SELECT COUNT(*) FROM counters").fetchone()[0] == 0
    plan = " ".join(str(r) for r in db.execute(
        "EXPLAIN QUERY PLAN DELETE FROM blobs WHERE expires < 0"))
    assert "blobs_expires" in plan  # the sweep reads the index, not every row


def test_sqlite_file_from_before_the_lengths_table_is_counted_once(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE lists (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, "
               "value BLOB NOT NULL)")
    db.executemany("INSERT INTO lists (key, value) VALUES (?, ?)",
                   [("router:labels", b"a"), ("router:labels", b"b"), ("privacy:mem:x", b"c")])
    db.commit()
    db.close()
    store = SQLiteState(path)

    async def run():
        assert await store.length("router:labels") == 2
        assert await store.append("router:labels", b"d") == 3
        assert await store.length("privacy:mem:x") == 1
        await store.close()

    asyncio.run(run())
    assert SQLiteState(path)._length("router:labels") == 3  # reopened: not counted again
