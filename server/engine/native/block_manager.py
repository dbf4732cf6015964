"""Paged KV cache bookkeeping with prefix caching (no torch).

The KV cache is ``num_blocks`` blocks of ``block_size`` token slots. A sequence owns the
blocks listed in its ``block_table``; token ``i`` lives in slot
``block_table[i // block_size] * block_size + i % block_size``.

Prefix caching: a *full* block is named by a hash chained over every token before it
(:func:`server.engine.kv_events.chain_hash`, stable across processes), so two sequences
share a block only when their whole prefixes match. Blocks carry reference counts; a block whose count drops to zero goes back
to the free list but keeps its hash, so a later request with the same prefix can revive it
until the block is handed out again (least recently freed first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ..kv_events import KvEventLog, chain_hash
from .sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] = field(default=())


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 events: KvEventLog | None = None):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.events = events  # BlockStored / BlockRemoved, for GET /v1/kv/events
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        # Per sequence: hashes of its full blocks so far (the chain continues from the last).
        self._seq_hashes: dict[str, list[int]] = {}

    # -- queries ---------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def prefix_hits(self, seq: Sequence) -> list[int]:
        """Cached blocks matching seq's leading full blocks (a pure lookup).

        The last token is never served from cache: its logits are needed to sample.
        """
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        bs = self.block_size
        memo = seq.prefix_hashes  # tokens are only ever appended, so the chain stays valid
        for i, start in enumerate(range(0, seq.num_tokens - 1 - bs + 1, bs)):
            tokens = tuple(seq.token_ids[start:start + bs])
            if i == len(memo):
                memo.append(chain_hash(memo[-1] if memo else None, tokens))
            block_id = self.hash_to_block.get(memo[i])
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
        return hits

    def can_allocate(self, seq: Sequence, hits: list[int], num_tokens: int) -> bool:
        """Could seq cover num_tokens after claiming hits? Reviving a free hit costs a block."""
        new = max(0, self.blocks_needed(num_tokens) - len(seq.block_table) - len(hits))
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return new + revived <= len(self.free)

    # -- mutations -------------------------------------------------------------------
    def claim_prefix(self, seq: Sequence, hits: list[int]) -> None:
        """Give a fresh sequence the cached blocks; advances its num_computed_tokens."""
        if seq.block_table:
            raise RuntimeError(f"{seq.seq_id} already has blocks")
        hashes = []
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            hashes.append(block.block_hash)
        self._seq_hashes[seq.seq_id] = hashes
        seq.num_computed_tokens = len(hits) * self.block_size
        if seq.num_preemptions == 0:  # a recompute finding its own blocks is not a cache hit
            seq.num_cached_tokens = seq.num_computed_tokens

    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Extend seq.block_table to cover num_tokens slots. False (and no change) if full."""
        need = self.blocks_needed(num_tokens) - len(seq.block_table)
        if need > len(self.free):
            return False
        for _ in range(need):
            seq.block_table.append(self._take_free())
        return True

    def _take_free(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:  # evict its cache entry: the slots get overwritten
            if self.hash_to_block.get(block.block_hash) == block_id:
                del self.hash_to_block[block.block_hash]
                if self.events is not None:
                    self.events.removed([block.block_hash])
            block.block_hash = None
            block.token_ids = ()
        block.ref_count = 1
        return block_id

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the hashes of seq's blocks that became full of computed tokens."""
        if not self.enable_prefix_caching:
            return
        hashes = self._seq_hashes.setdefault(seq.seq_id, [])
        bs = self.block_size
        num_full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        stored: list[int] = []
        prev = hashes[-1] if hashes else None
        run_parent = None  # the block before the first one in ``stored``
        while len(hashes) < num_full:
            i = len(hashes)
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = chain_hash(prev, tokens)
            hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if block.block_hash is None and h not in self.hash_to_block:
                block.block_hash, block.token_ids = h, tokens
                self.hash_to_block[h] = block.block_id
                if not stored:
                    run_parent = prev
                stored.append(h)
            elif stored:  # the run of newly stored blocks broke: report it
                self._report(stored, run_parent)
                stored = []
            prev = h
        self._report(stored, run_parent)

    def _report(self, stored: list[int], parent: int | None) -> None:
        if stored and self.events is not None:
            self.events.stored(stored, parent, self.block_size)

    def free_seq(self, seq: Sequence) -> None:
        """Drop seq's references; blocks reaching zero go to the back of the free list.

        Freed in reverse so that a sequence's tail blocks are evicted before its head,
        which is the part other requests are likeliest to share.
        """
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count < 0:
                raise RuntimeError(f"block {block_id} freed twice")
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table.clear()
        self._seq_hashes.pop(seq.seq_id, None)
