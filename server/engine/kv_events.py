"""Prefix-cache block hashes and KV-cache events, shared by the native and sim engines.

Block hash: a *full* block of ``block_size`` prompt tokens is named by a 64-bit hash chained
over its parent's hash, so two blocks share a name only when their whole prefixes match::

    block_hash = int.from_bytes(blake2b(parent.to_bytes(8, "big") + tokens as int32 little-endian,
                                        digest_size=8).digest(), "big")

with ``parent = 0`` for the first block. It is stable across processes and machines (unlike
Python's ``hash``), so a consumer of the events can compute the same names from token ids.

Events mirror vLLM's KV events (``BlockStored``, ``BlockRemoved``, ``AllBlocksCleared``) and
sit in a bounded ring with a monotonically increasing sequence number; a consumer that fell
behind the ring is told so and resyncs. No asyncio, no torch: the native engine appends from
its worker thread and the HTTP layer reads from the event loop, hence the lock.
"""

from __future__ import annotations

import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Literal

EventKind = Literal["BlockStored", "BlockRemoved", "AllBlocksCleared"]
DEFAULT_RING = 4096


def chain_hash(parent: int | None, token_ids: Sequence[int]) -> int:
    data = (parent or 0).to_bytes(8, "big") + struct.pack(f"<{len(token_ids)}i", *token_ids)
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def block_hashes(token_ids: Sequence[int], block_size: int, limit: int | None = None) -> list[int]:
    """Chained hashes of the leading full blocks of ``token_ids`` (at most ``limit`` of them)."""
    n = len(token_ids) // block_size
    if limit is not None:
        n = min(n, limit)
    out: list[int] = []
    parent = None
    for i in range(n):
        parent = chain_hash(parent, token_ids[i * block_size:(i + 1) * block_size])
        out.append(parent)
    return out


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
