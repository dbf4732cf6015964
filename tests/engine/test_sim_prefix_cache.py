"""SimEngine prefix cache (hits, LRU eviction under the KV budget, off switch, prefill charged
only for uncached tokens) and priority admission. Timings are modelled, so the assertions are
on modelled time with generous margins."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.config import NodeSettings
from server.engine.base import GenerateRequest, SamplingOptions
from server.engine.kv_events import EventsGone, KvEventLog, block_hashes
from server.engine.sim import SimEngine
from server.engine.sim_kv import SimKvPool


def make(**opts) -> SimEngine:
    return SimEngine(NodeSettings(engine="sim", engine_options=opts), "sim-model")


def req(rid: str, tokens: list[int], max_tokens: int = 1, priority: int = 0) -> GenerateRequest:
    return GenerateRequest(rid, tokens, SamplingOptions(max_tokens=max_tokens), priority=priority)


async def run(engine: SimEngine, r: GenerateRequest) -> tuple[float, list]:
    t0 = time.monotonic()
    ttft, deltas = None, []
    async for d in engine.generate(r):
        ttft = ttft if ttft is not None else time.monotonic() - t0
        deltas.append(d)
    return ttft, deltas


async def test_repeated_prefix_hits_and_prefill_is_charged_only_for_uncached_tokens():
    eng = make(prefill_tokens_per_s=4000, decode_ms=2, decode_ms_per_seq=0, block_size=16)
    await eng.start()
    try:
        context = list(range(1000, 1800))  # 800 tokens: 200 ms of prefill
        cold, d1 = await run(eng, req("a", context + [7]))
        warm, d2 = await run(eng, req("b", context + [8, 9]))
        assert d1[-1].cached_tokens == 0
        assert d2[-1].cached_tokens == 800  # 50 full blocks of the shared context
        assert cold >= 0.19
        assert warm < 0.05  # 2 uncached tokens + one step
        assert eng.kv.hits == 800 and eng.stats().prefix_caching
    finally:
        await eng.stop()


async def test_last_prompt_token_is_never_served_from_cache():
    eng = make(block_size=4, prefill_tokens_per_s=1e9, decode_ms=1)
    await eng.start()
    try:
        prompt = list(range(100, 108))  # exactly two blocks
        await run(eng, req("a", prompt))
        _, d = await run(eng, req("b", prompt))
        assert d[-1].cached_tokens == 4  # the second block holds the last token: recomputed
    finally:
        await eng.stop()


async def test_off_switch_disables_the_cache():
    eng = make(enable_prefix_caching="false", prefill_tokens_per_s=4000, decode_ms=2, block_size=16)
    await eng.start()
    try:
        context = list(range(1000, 1800))
        await run(eng, req("a", context + [7]))
        warm, d = await run(eng, req("b", context + [8]))
        assert d[-1].cached_tokens == 0 and warm >= 0.19
        assert not eng.stats().prefix_caching and eng.kv.cached_blocks == 0
    finally:
        await eng.stop()
    with pytest.raises(ValueError, match="boolean"):
        make(enable_prefix_caching="perhaps")


def test_lru_eviction_under_the_kv_budget_keeps_the_recently_used_prefix():
    pool = SimKvPool(capacity_tokens=64, block_size=4)  # 16 blocks
    a, b, c = [list(range(s, s + 24)) + [1] for s in (1000, 2000, 3000)]  # 6 full blocks each
    for prompt in (a, b):
        pool.release(pool.try_reserve(prompt, len(prompt) + 1))
    pool.release(pool.try_reserve(a, len(a) + 1))  # a used again: b is now least recent
    assert pool.cached_blocks == 12 and pool.used_blocks == 0 and pool.usage() == 0
    res = pool.try_reserve(c, len(c) + 1)  # 6 cached + 1 private: 3 over budget, evicts b's tail
    assert res is not None and res.cached_tokens == 0
    assert pool.cached_blocks + 1 <= 16
    assert pool.cached_prefix_tokens(a) == 24  # the recently used prefix survived
    assert pool.cached_prefix_tokens(b) == 12  # b lost its tail blocks first, kept its head
    assert pool.used_blocks == 7
    pool.release(res)


def test_pool_refuses_what_pinned_blocks_leave_no_room_for():
    pool = SimKvPool(capacity_tokens=32, block_size=4)  # 8 blocks
    first = pool.try_reserve(list(range(20)) + [1], 25)  # 5 cached + 2 private
    assert first is not None and pool.used_blocks == 7
    assert pool.try_reserve(list(range(100, 108)) + [1], 12) is None  # needs 3, 1 free, none evictable
    shared = pool.try_reserve(list(range(20)) + [2], 22)  # shares 5 pinned blocks, needs 1 private
    assert shared is not None and shared.cached_tokens == 20 and pool.used_blocks == 8
    pool.release(first)
    pool.release(shared)
    assert pool.used_blocks == 0


async def test_priority_admission_lower_value_first():
    eng = make(prefill_tokens_per_s=1e9, decode_ms=5, decode_ms_per_seq=0, max_num_seqs=1)
    await eng.start()
    try:
        blocker = asyncio.ensure_future(run(eng, req("blocker", [5, 6, 7], max_tokens=6)))
        await asyncio.sleep(0.01)
        order: list[str] = []

        async def one(rid: str, prio: int) -> None:
            await run(eng, req(rid, [10 + len(order), 3], priority=prio))
            order.append(rid)

        tasks = [asyncio.ensure_future(one("batch1", 5)), asyncio.ensure_future(one("batch2", 5))]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(one("urgent", -3)))
        await asyncio.sleep(0.005)
        s = eng.stats()
        assert s.waiting_by_priority == {5: (2, 4), -3: (1, 2)}
        assert s.waiting_at_or_before(-3) == (1, 2) and s.waiting_at_or_before(5) == (3, 6)
        await asyncio.gather(blocker, *tasks)
        assert order == ["urgent", "batch1", "batch2"]  # arrival order within a class
    finally:
        await eng.stop()


async def test_kv_events_report_stored_and_removed_blocks():
    eng = make(prefill_tokens_per_s=1e9, decode_ms=1, block_size=4, kv_capacity_tokens=32)
    await eng.start()
    try:
        a = list(range(100, 116)) + [1]
        await run(eng, req("a", a))
        events, nxt = eng.kv_events.since(0)
        stored = [e for e in events if e.type == "BlockStored"]
        assert stored[0].block_hashes == block_hashes(a, 4) and stored[0].parent_block_hash is None
        assert stored[0].token_count == 16 and stored[0].block_size == 4
        await run(eng, req("b", list(range(200, 224)) + [1]))  # 6 cached + 1 private of 8: evicts a's
        events, nxt2 = eng.kv_events.since(nxt)
        removed = [h for e in events if e.type == "BlockRemoved" for h in e.block_hashes]
        assert removed and set(removed) <= set(block_hashes(a, 4))
        assert nxt2 > nxt
    finally:
        await eng.stop()


def test_event_ring_is_bounded_and_says_when_a_consumer_fell_behind():
    log = KvEventLog(capacity=3)
    for i in range(5):
        log.stored([i], None, 16)
    with pytest.raises(EventsGone):
        log.since(0)
    events, nxt = log.since(2)
    assert [e.seq for e in events] == [2, 3, 4] and nxt == 5
    assert log.since(5) == ([], 5)
