"""Capacity poller: every ``interval`` seconds, GET each node's ``/v1/capacity`` in parallel.

The poll doubles as the health probe (it drives the circuit breaker in every state) and
as the RTT measurement (wall time of the whole HTTP round trip).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from server.capacity.schema import Capacity
from server.router.policy import POLL_PRIORITY, REF_MAX_TOKENS, REF_PROMPT_TOKENS
from server.router.registry import Node, Registry
from server.router.trust import bound_capacity
from server.router.upstream import ConnectFailed, ConnectTimeout, UpstreamIOError, UpstreamPool

log = logging.getLogger("edgefleet.router.poller")

CAPACITY_PATH = (f"/v1/capacity?prompt_tokens={REF_PROMPT_TOKENS}&max_tokens={REF_MAX_TOKENS}"
                 f"&priority={POLL_PRIORITY}")
CAPACITY_MAX_BYTES = 1 << 20  # a capacity document is a few KiB


async def poll_node(pool: UpstreamPool, node: Node, timeout: float, registry: Registry | None = None) -> bool:
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            resp = await pool.request(node.url, CAPACITY_PATH, b"", node.auth_headers, method="GET",
                                      connect_timeout=timeout, head_timeout=None, max_body=CAPACITY_MAX_BYTES)
            try:
                body = await resp.read()
            finally:
                resp.release()
        rtt_ms = (time.monotonic() - start) * 1000.0
        if resp.status != 200:
            raise RuntimeError(f"capacity answered HTTP {resp.status}")
        capacity = bound_capacity(Capacity.model_validate_json(body))  # G3: no absurd figure reaches policy
    except (UpstreamIOError, TimeoutError, RuntimeError, ValidationError, ValueError) as exc:
        now = time.monotonic()
        was = node.breaker.poll_state(now)
        node.breaker.record_failure(now)
        node.last_error = _describe(exc)
        if was != node.breaker.state:
            log.warning("node %s is %s: %s", node.name, node.breaker.state, node.last_error)
        return False
    now = time.monotonic()
    was = node.breaker.poll_state(now)
    node.on_poll(capacity, rtt_ms, now)
    if registry is not None:
        registry.adopt_name(node, capacity.identity.name)
    node.breaker.record_success(now)
    if was != node.breaker.state:
        log.info("node %s is %s", node.name, node.breaker.state)
    return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, ConnectTimeout)):
        return "capacity poll timed out"
    if isinstance(exc, ConnectFailed):
        return "connection refused or unreachable"
    if isinstance(exc, ValidationError):
        return "capacity document did not validate"
    return str(exc)[:200] or type(exc).__name__


class Poller:
    def __init__(self, registry: Registry, pool: UpstreamPool, interval: float = 1.0,
                 timeout: float | None = None,
                 after: Callable[[list[Node]], Awaitable[None]] | None = None):
        """``after``: run with the nodes after each round (the KV event follower)."""
        self.registry = registry
        self.pool = pool
        self.interval = interval
        # Generous: a poll that is merely slow (a busy node, a loaded host) must not count as
        # a failure, or a burst of load would open breakers across the fleet.
        self.timeout = timeout if timeout is not None else max(2.0, interval)
        self._task: asyncio.Task[None] | None = None
        self.after = after
        self.rounds = 0

    async def poll_once(self) -> None:
        nodes = self.registry.nodes()
        if nodes:
            await asyncio.gather(*(poll_node(self.pool, n, self.timeout, self.registry) for n in nodes))
            if self.after is not None:
                await self.after(nodes)
        self.rounds += 1

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:  # never let one bad round stop the poller
                log.exception("capacity poll round failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="capacity-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
