"""BlockManager with made-up token ids: allocation, prefix hits, ref counts, eviction."""

import pytest

from server.engine.native.block_manager import BlockManager
from server.engine.native.sequence import Sequence


def seq(name, tokens):
    return Sequence(name, tokens, max_tokens=8)


def admit(bm, s):
    hits = bm.prefix_hits(s)
    assert bm.can_allocate(s, hits, s.num_tokens)
    bm.claim_prefix(s, hits)
    assert bm.grow(s, s.num_tokens)
    s.num_computed_tokens = s.num_tokens
    bm.cache_full_blocks(s)
    return hits


def test_allocate_and_free_returns_every_block():
    bm = BlockManager(8, 4, enable_prefix_caching=False)
    s = seq("a", list(range(10)))
    admit(bm, s)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    bm.free_seq(s)
    assert bm.num_free_blocks == 8 and s.block_table == []


def test_grow_refuses_without_change_when_full():
    bm = BlockManager(2, 4, enable_prefix_caching=False)
    s = seq("a", list(range(8)))
    assert bm.grow(s, 8)
    assert not bm.grow(s, 9)
    assert len(s.block_table) == 2


def test_prefix_hit_shares_blocks_and_counts_references():
    bm = BlockManager(16, 4)
    a = seq("a", list(range(11)))
    admit(bm, a)
    b = seq("b", list(range(9)) + [99, 98])  # shares two full blocks (8 tokens)
    hits = admit(bm, b)
    assert hits == a.block_table[:2]
    assert b.num_cached_tokens == 8
    assert bm.blocks[hits[0]].ref_count == 2
    bm.free_seq(a)
    assert bm.blocks[hits[0]].ref_count == 1
    assert hits[0] not in bm.free


def test_last_token_is_never_cached():
    bm = BlockManager(16, 4)
    admit(bm, seq("a", list(range(8))))
    b = seq("b", list(range(8)))  # identical, block aligned
    assert len(bm.prefix_hits(b)) == 1  # the second block holds the last token: recompute it


def test_chain_hash_requires_whole_prefix():
    bm = BlockManager(16, 4)
    admit(bm, seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    b = seq("b", [0, 2, 3, 4, 5, 6, 7, 8, 9])  # same second block, different first
    assert bm.prefix_hits(b) == []


def test_freed_cached_block_is_revived_until_evicted():
    bm = BlockManager(4, 4)
    a = seq("a", list(range(9)))
    admit(bm, a)
    first = a.block_table[0]
    bm.free_seq(a)
    b = seq("b", list(range(9)))
    hits = bm.prefix_hits(b)
    assert hits and hits[0] == first
    assert bm.can_allocate(b, hits, 9)
    # Now use every block for unrelated tokens: the cached ones get evicted.
    c = seq("c", [500 + i for i in range(16)])
    admit(bm, c)
    assert bm.prefix_hits(seq("d", list(range(9)))) == []


def test_double_free_is_an_error():
    bm = BlockManager(4, 4, enable_prefix_caching=False)
    s = seq("a", [1, 2, 3])
    admit(bm, s)
    table = list(s.block_table)
    bm.free_seq(s)
    s.block_table = table
    with pytest.raises(RuntimeError):
        bm.free_seq(s)
