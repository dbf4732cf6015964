"""The router's durable state: idempotency results and the per-key limit windows and usage.

One store (:mod:`server.store`): SQLite in ``--state-dir`` (in memory without one), or a
shared Redis-protocol server with ``--store redis://host:port/db``. Limit state is flushed
every ``--limits-flush-interval`` seconds and at shutdown, and loaded at start: a crash
loses at most the last interval's counts. Windows are kept in wall-clock time in the store
and mapped back onto the monotonic clock at load.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

from server.edge.idempotency import Idempotency
from server.router.limits import RateLimiter, WINDOW_S
from server.store import Store, open_store

log = logging.getLogger("edgefleet.router")


def store_options(opt):
    """The flags, as a decorator for ``edgefleet route``."""
    import click

    def wrap(f):
        for deco in reversed([
            opt("--state-dir", type=click.Path(file_okay=False), default=None,
                help="Directory for the router's SQLite store (idempotency results, limit windows, usage). "
                     "Without it (and without --store) they live in memory and die with the process."),
            opt("--store", "store_url", default=None,
                help="Shared Redis-protocol store instead of SQLite, e.g. redis://10.0.0.9:6379/0."),
            opt("--idempotency-ttl", type=click.FloatRange(min=1), default=86_400.0, show_default=True,
                help="Seconds a finished result is kept for retries with the same Idempotency-Key."),
            opt("--idempotency-max-bytes", type=click.IntRange(min=0), default=1 << 20, show_default=True,
                help="Largest response (body or SSE transcript) stored for replay; past it only the outcome "
                     "is kept and a retry gets 409 idempotency_result_too_large."),
            opt("--store-max-entries", type=click.IntRange(min=1), default=10_000, show_default=True,
                help="Most idempotency results kept in SQLite (the first to expire go first)."),
            opt("--store-max-bytes", type=click.IntRange(min=1), default=1 << 30, show_default=True,
                help="Most bytes of idempotency results kept in SQLite (the first to expire go first)."),
            opt("--limits-flush-interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
                help="Seconds between writes of limit windows and usage to the store (what a crash can lose)."),
        ]):
            f = deco(f)
        return f
    return wrap


def store_settings(kw: dict[str, Any]) -> dict[str, Any]:
    url = kw.get("store_url")
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        import click

        raise click.BadParameter("give redis://host:port/db (or rediss://, unix://); leave it unset for SQLite",
                                 param_hint="--store")
    return {k: kw[k] for k in ("state_dir", "store_url", "idempotency_ttl", "idempotency_max_bytes",
                               "store_max_entries", "store_max_bytes", "limits_flush_interval") if k in kw}


def dump_limits(limiter: RateLimiter, mono_now: float, wall_now: float) -> bytes:
    def wall(t: float) -> float:
        return round(wall_now - (mono_now - t), 3)

    keys = {}
    for key_id, u in limiter.usage.items():
        keys[key_id] = {"requests": u.requests, "prompt_tokens": u.prompt_tokens,
                        "completion_tokens": u.completion_tokens, "errors": u.errors,
                        "rate_limited": u.rate_limited,
                        "request_times": [wall(t) for t in u.request_times if t > mono_now - WINDOW_S],
                        "token_log": [[wall(t), n] for t, n in u.token_log if t > mono_now - WINDOW_S]}
    return json.dumps({"v": 1, "keys": keys}, separators=(",", ":")).encode()


def load_limits(limiter: RateLimiter, raw: bytes, mono_now: float, wall_now: float) -> int:
    """Restore totals and the windows still open; in-flight counts start at zero."""
    doc = json.loads(raw)
    if doc.get("v") != 1:
        return 0
    for key_id, d in doc.get("keys", {}).items():
        u = limiter._usage(key_id)
        u.requests, u.prompt_tokens = int(d["requests"]), int(d["prompt_tokens"])
        u.completion_tokens, u.errors = int(d["completion_tokens"]), int(d["errors"])
        u.rate_limited = int(d["rate_limited"])
        cutoff = wall_now - WINDOW_S
        u.request_times = deque(mono_now - (wall_now - t) for t in d["request_times"] if t > cutoff)
        if u.tracks_tokens:
            u.token_log = deque((mono_now - (wall_now - t), int(n)) for t, n in d["token_log"] if t > cutoff)
    return len(doc.get("keys", {}))


class Persistence:
    """Owns the store for one router: builds its :class:`Idempotency`, loads and flushes limits."""

    def __init__(self, router: Any):
        s = router.settings
        self.router = router
        # SQLite belongs to one router (its state directory): a restart on another port finds it.
        # Routers sharing a Redis store keep their own windows, one per port.
        self.limits_key = f"limits:{s.port}" if s.store_url else "limits"
        self.store: Store | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        s = self.router.settings
        self.store = open_store(s.store_url, s.state_dir, s.store_max_entries, s.store_max_bytes)
        self.router.idempotency = Idempotency(self.store, s.idempotency_ttl, s.idempotency_max_bytes,
                                              error_headers={"x-edgefleet-node": "router"})
        try:
            raw = await self.store.get(self.limits_key)
            if raw:
                n = load_limits(self.router.limiter, raw, time.monotonic(), time.time())
                log.info("restored limit windows and usage for %d keys", n)
        except Exception as exc:
            log.warning("could not load limit state from the store (%s); starting fresh", exc)
        self.task = asyncio.create_task(self._flush_loop(s.limits_flush_interval))

    async def flush(self) -> None:
        if self.store is None:
            return
        data = dump_limits(self.router.limiter, time.monotonic(), time.time())
        await self.store.put(self.limits_key, data, None)

    async def _flush_loop(self, interval: float) -> None:
        last = b""
        while True:
            await asyncio.sleep(interval)
            try:
                data = dump_limits(self.router.limiter, time.monotonic(), time.time())
                if data != last and self.store is not None:
                    await self.store.put(self.limits_key, data, None)
                    last = data
            except Exception as exc:
                log.warning("limit state flush failed: %s", exc)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        idem = self.router.idempotency
        if idem is not None:  # let detached generations finish storing, briefly
            pending = [r.task for r in idem.running.values() if r.task is not None]
            if pending:
                await asyncio.wait(pending, timeout=5)
        try:
            await self.flush()
        except Exception as exc:
            log.warning("final limit state flush failed: %s", exc)
        if self.store is not None:
            await self.store.close()
            self.store = None


__all__ = ["Persistence", "dump_limits", "load_limits", "store_options", "store_settings"]
