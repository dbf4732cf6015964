"""Prefix-cache block hashes and KV-cache events, shared by the native and sim engines.

Block hashes (``chain_hash``, ``block_hashes``) live in :mod:`server.kvhash`, below both the
engines and the router: a consumer of the events computes the same names from token ids.

Events mirror vLLM's KV events (``BlockStored``, ``BlockRemoved``, ``AllBlocksCleared``) and
sit in a bounded ring with a monotonically increasing sequence number; a consumer that fell
behind the ring is told so and resyncs. No asyncio, no torch: the native engine appends from
its worker thread and the HTTP layer reads from the event loop, hence the lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from server.kvhash import block_hashes, chain_hash

__all__ = ["DEFAULT_RING", "EventsGone", "KvEvent", "KvEventLog", "block_hashes", "chain_hash"]

EventKind = Literal["BlockStored", "BlockRemoved", "AllBlocksCleared"]
DEFAULT_RING = 4096


@dataclass(slots=True)
class KvEvent:
    seq: int
    ts: float
    type: EventKind
    block_hashes: list[int] = field(default_factory=list)
    parent_block_hash: int | None = None  # BlockStored: the block before the first one stored
    token_count: int = 0  # BlockStored: tokens in the stored blocks
    block_size: int = 0

    def json(self) -> dict:
        d: dict = {"seq": self.seq, "ts": self.ts, "type": self.type}
        if self.type == "BlockStored":
            d |= {"block_hashes": self.block_hashes, "parent_block_hash": self.parent_block_hash,
                  "token_count": self.token_count, "block_size": self.block_size}
        elif self.type == "BlockRemoved":
            d["block_hashes"] = self.block_hashes
        return d


class EventsGone(Exception):
    """The requested sequence number fell off the ring: the consumer must resync."""


class KvEventLog:
    def __init__(self, capacity: int = DEFAULT_RING):
        self._ring: deque[KvEvent] = deque(maxlen=max(1, capacity))
        self._next = 0  # sequence number of the next event
        self._lock = threading.Lock()

    @property
    def next_seq(self) -> int:
        return self._next

    def _add(self, kind: EventKind, **kw) -> None:
        with self._lock:
            self._ring.append(KvEvent(self._next, time.time(), kind, **kw))
            self._next += 1

    def stored(self, hashes: list[int], parent: int | None, block_size: int) -> None:
        if hashes:
            self._add("BlockStored", block_hashes=list(hashes), parent_block_hash=parent,
                      token_count=len(hashes) * block_size, block_size=block_size)

    def removed(self, hashes: list[int]) -> None:
        if hashes:
            self._add("BlockRemoved", block_hashes=list(hashes))

    def cleared(self) -> None:
        self._add("AllBlocksCleared")

    def since(self, seq: int, limit: int = 1000) -> tuple[list[KvEvent], int]:
        """Events with sequence number >= seq (at most ``limit``) and the next sequence to ask for.

        Raises EventsGone when events in [seq, oldest kept) were dropped."""
        with self._lock:
            oldest = self._ring[0].seq if self._ring else self._next
            if seq < oldest and seq < self._next:
                raise EventsGone(f"events before {oldest} were dropped; resync from {oldest}")
            seq = min(seq, self._next)
            start = seq - oldest
            out = [self._ring[i] for i in range(start, min(len(self._ring), start + limit))]
            return out, (out[-1].seq + 1 if out else seq)
