"""The sim engine's KV pool: blocks, a block-hash prefix cache and LRU eviction (no asyncio).

Accounting is in blocks of ``block_size`` tokens, like vLLM's and the native engine's. A
request reserves its whole footprint (prompt + max_tokens) on admission, so the sim never
preempts. Its *full prompt blocks* live in the prefix cache, named by chained hashes
(:func:`server.engine.kv_events.chain_hash`); the rest (the partial last prompt block and room
for the output) are private to the request. A cached block is pinned while a running request
uses it; unpinned cached blocks stay resident until the pool needs their room, least recently
released first (a request's tail blocks before its head, as vLLM frees them). Leading cached
blocks of a new prompt are hits: their tokens are not prefilled again. As in vLLM, the last
prompt token is never served from cache (its logits are needed to sample).

With prefix caching off nothing is cached: every block is private.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from server.engine.kv_events import KvEventLog, block_hashes


@dataclass(slots=True)
class Reservation:
    hashes: list[int] = field(default_factory=list)  # cached prompt blocks this request pins
    private: int = 0  # blocks outside the cache
    cached_tokens: int = 0  # prompt tokens served from the prefix cache


class SimKvPool:
    def __init__(self, capacity_tokens: int, block_size: int, prefix_caching: bool = True,
                 events: KvEventLog | None = None):
        if block_size <= 0 or capacity_tokens < block_size:
            raise ValueError("sim engine: block_size must be > 0 and kv_capacity_tokens >= block_size")
        self.block_size = block_size
        self.num_blocks = capacity_tokens // block_size
        self.prefix_caching = prefix_caching
        self.events = events
        self._refs: OrderedDict[int, int] = OrderedDict()  # block hash -> pins; LRU order among 0s
        self._evictable = 0  # cached blocks with no pins
        self._private = 0
        self.hits = 0  # cached prompt tokens served (for tests and benchmarks)
        self.queries = 0  # prompt tokens looked up

    # --- queries ---------------------------------------------------------------------
    def blocks_needed(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @property
    def used_blocks(self) -> int:
        """Blocks held by running requests (vLLM's notion of usage: unpinned cache is free)."""
        return self._private + len(self._refs) - self._evictable

    @property
    def cached_blocks(self) -> int:
        return len(self._refs)

    def usage(self) -> float:
        return min(1.0, self.used_blocks / self.num_blocks)

    def cached_prefix_tokens(self, prompt: list[int]) -> int:
        """Tokens of ``prompt`` a request admitted now would find cached (a pure lookup)."""
        if not self.prefix_caching:
            return 0
        n = 0
        for h in block_hashes(prompt, self.block_size, (len(prompt) - 1) // self.block_size):
            if h not in self._refs:
                break
            n += 1
        return n * self.block_size

    # --- admission and release -------------------------------------------------------
    def prompt_hashes(self, prompt: list[int]) -> list[int]:
        """The chained hashes of the prompt's full blocks (empty with caching off)."""
        return block_hashes(prompt, self.block_size) if self.prefix_caching else []

    def try_reserve(self, prompt: list[int], total_tokens: int, hashes: list[int] | None = None) -> Reservation | None:
        """Reserve room for a request of ``total_tokens`` (prompt + max_tokens), or None if full.

        ``hashes``: :meth:`prompt_hashes` of the prompt, if the caller kept them."""
        bs = self.block_size
        hashes = self.prompt_hashes(prompt) if hashes is None else hashes
        hits = 0
        max_hits = (len(prompt) - 1) // bs
        while hits < min(len(hashes), max_hits) and hashes[hits] in self._refs:
            hits += 1
        new = [h for h in hashes if h not in self._refs]
        private = self.blocks_needed(total_tokens) - len(hashes)
        free = self.num_blocks - self._private - len(self._refs)
        reusable = sum(1 for h in set(hashes) if self._refs.get(h) == 0)  # pinned by us: not evictable
        if private + len(new) > free + self._evictable - reusable:
            return None
        for h in hashes:
            if h in self._refs:
                if self._refs[h] == 0:
                    self._evictable -= 1
                self._refs[h] += 1
        self._evict(private + len(new) - free)
        parent, first_new = None, None
        for i, h in enumerate(hashes):
            if h not in self._refs:
                self._refs[h] = 1
                if first_new is None:
                    first_new, parent = i, (hashes[i - 1] if i else None)
        if self.events is not None and first_new is not None:
            self.events.stored([h for h in hashes[first_new:]], parent, bs)
        self._private += private
        self.queries += len(prompt)
        self.hits += hits * bs
        return Reservation(hashes, private, hits * bs)

    def _evict(self, count: int) -> None:
        if count <= 0:
            return
        gone: list[int] = []
        for h, pins in self._refs.items():  # least recently released first
            if pins == 0:
                gone.append(h)
                if len(gone) == count:
                    break
        if len(gone) < count:
            raise RuntimeError("sim KV pool: nothing left to evict")
        for h in gone:
            del self._refs[h]
        self._evictable -= len(gone)
        if self.events is not None:
            self.events.removed(gone)

    def release(self, res: Reservation) -> None:
        self._private -= res.private
        res.private = 0
        for h in reversed(res.hashes):  # tail first: it is evicted before the shared head
            self._refs[h] -= 1
            if self._refs[h] == 0:
                self._evictable += 1
                self._refs.move_to_end(h)
        res.hashes = []

    def clear(self) -> None:
        """Drop every unpinned cached block (and say so)."""
        for h in [k for k, v in self._refs.items() if v == 0]:
            del self._refs[h]
        self._evictable = 0
        if self.events is not None:
            self.events.cleared()
