"""A small durable key-value store for the router: idempotency results and limit state.

Three backends with one interface (``get``/``put``/``delete``/``close``, all async):

- :class:`SqliteStore`: embedded SQLite (WAL) in the state directory, or in memory when none
  is given. Every call runs on one worker thread, never on the event loop. Bounded: entries
  expire (``expires`` column, swept on writes) and past ``max_entries`` or ``max_bytes`` the
  entries closest to expiry are dropped.
- :class:`MemoryStore`: a bounded dict with expiry (the node's results).
- :class:`RedisStore`: a Redis-protocol server (``redis://host:port/db``) shared by several
  routers. Expiry is the server's (``SET .. PX``); its memory bound is the server's
  ``maxmemory``. Only a shared store has ``claim`` (``SET .. NX PX``): the lease that keeps
  two routers from running one Idempotency-Key at once (one process needs none).

No HTTP here: the edge (``server/edge/idempotency.py``) and the router's limit persistence
(``server/router/persist.py``) sit on top.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol


class Store(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes, ttl_s: float | None) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def close(self) -> None: ...


class SqliteStore:
    """SQLite on one worker thread. ``path=None``: in memory (lost at exit)."""

    def __init__(self, path: str | Path | None, max_entries: int = 10_000, max_bytes: int = 1 << 30):
        self.path = str(path) if path is not None else ":memory:"
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgefleet-store")
        self._db: sqlite3.Connection | None = None
        self._pool.submit(self._open).result()

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)  # autocommit; one statement per write
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL, expires REAL)")
        db.execute("CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires)")
        self._db = db

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- on the worker thread ---
    def _get(self, key: str) -> bytes | None:
        assert self._db is not None
        row = self._db.execute("SELECT v, expires FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return bytes(row[0])

    def _put(self, key: str, value: bytes, ttl_s: float | None) -> None:
        assert self._db is not None
        now = time.time()
        db = self._db
        db.execute("INSERT OR REPLACE INTO kv (k, v, expires) VALUES (?, ?, ?)",
                   (key, value, None if ttl_s is None else now + ttl_s))
        db.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (now,))
        over = db.execute("SELECT COUNT(*) FROM kv WHERE expires IS NOT NULL").fetchone()[0] - self.max_entries
        if over > 0:  # drop the entries that would expire first
            db.execute("DELETE FROM kv WHERE k IN (SELECT k FROM kv WHERE expires IS NOT NULL "
                       "ORDER BY expires LIMIT ?)", (over,))
        total = db.execute("SELECT COALESCE(SUM(length(v)), 0) FROM kv WHERE expires IS NOT NULL").fetchone()[0]
        if total > self.max_bytes:  # then the bytes bound, again the first to expire first
            drop = []
            for k, n in db.execute("SELECT k, length(v) FROM kv WHERE expires IS NOT NULL ORDER BY expires"):
                if total <= self.max_bytes:
                    break
                drop.append((k,))
                total -= n
            db.executemany("DELETE FROM kv WHERE k = ?", drop)

    def _delete(self, key: str) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM kv WHERE k = ?", (key,))

    def _count(self) -> int:
        assert self._db is not None
        return self._db.execute("SELECT COUNT(*) FROM kv WHERE expires IS NOT NULL").fetchone()[0]

    # --- async interface ---
    async def get(self, key: str) -> bytes | None:
        return await self._run(self._get, key)

    async def put(self, key: str, value: bytes, ttl_s: float | None) -> None:
        await self._run(self._put, key, value, ttl_s)

    async def delete(self, key: str) -> None:
        await self._run(self._delete, key)

    async def count(self) -> int:
        """Entries with an expiry (results), for tests and metrics."""
        return await self._run(self._count)

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await self._run(close)
        self._pool.shutdown(wait=True)


class MemoryStore:
    """In the process, for the node: a dict with expiry, at most ``max_entries`` values and
    ``max_bytes`` in all (expired ones go first, then the oldest writes). No thread, nothing
    survives the process."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 256 << 20):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: dict[str, tuple[bytes, float | None]] = {}

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None or (item[1] is not None and item[1] <= time.time()):
            return None
        return item[0]

    async def put(self, key: str, value: bytes, ttl_s: float | None) -> None:
        now = time.time()
        await self.delete(key)
        self._data[key] = (value, None if ttl_s is None else now + ttl_s)
        self.bytes += len(value)
        if len(self._data) > self.max_entries or self.bytes > self.max_bytes:
            for k in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
                await self.delete(k)
            while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
                await self.delete(next(iter(self._data)))

    async def delete(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self.bytes -= len(item[0])

    async def close(self) -> None:
        self._data.clear()
        self.bytes = 0


class RedisStore:
    """A Redis-protocol server shared by several routers; keys under ``prefix``."""

    def __init__(self, url: str, prefix: str = "edgefleet:"):
        from redis.asyncio import Redis  # optional at import time: only with --store redis://

        self._redis = Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
        self.prefix = prefix

    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(self.prefix + key)

    async def put(self, key: str, value: bytes, ttl_s: float | None) -> None:
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))
        await self._redis.set(self.prefix + key, value, px=px)

    async def claim(self, key: str, ttl_s: float) -> bool:
        """Set ``key`` only if it is absent: True when this caller got it."""
        return bool(await self._redis.set(self.prefix + key, b"1", px=max(1, int(ttl_s * 1000)), nx=True))

    async def delete(self, key: str) -> None:
        await self._redis.delete(self.prefix + key)

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(url: str | None, state_dir: str | Path | None, max_entries: int, max_bytes: int = 1 << 30) -> Store:
    """``--store``: ``redis://...`` or ``rediss://...``, else SQLite in ``state_dir`` (in memory without one)."""
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    if url and url not in ("sqlite", ""):
        raise ValueError(f"unsupported store {url!r}: give redis://host:port/db or leave it unset for SQLite")
    path = Path(state_dir) / "router.sqlite3" if state_dir else None
    return SqliteStore(path, max_entries, max_bytes)


__all__ = ["MemoryStore", "RedisStore", "SqliteStore", "Store", "open_store"]
