"""Precise prefix mode: the KV event follower and the exact match, against the engines' own
event log, block pool and tokenizer (server/engine/kv_events.py, sim_kv.py, tokenspec.py)."""

from __future__ import annotations

import asyncio
import json

from server.capacity.schema import CacheInfo
from server.edge.protocol import ChatCompletionRequest, CompletionRequest
from server.engine.kv_events import EventsGone, KvEventLog
from server.engine.sim_kv import SimKvPool
from server.kvhash import block_hashes
from server.router.kv_follow import KvFollower, NodeKv
from server.tokenspec import SimTokenizer, TokenizerSpec, chat_messages
from tests.router.helpers import node

BS = 16


class _Resp:
    def __init__(self, status: int, body: bytes):
        self.status, self._body = status, body

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        pass


class NodePool:
    """Answers like a node's /v1/kv/events and /v1/tokenizer (server/api/node_routes.py)."""

    def __init__(self, log: KvEventLog, model: str = "m"):
        self.log, self.model, self.paths = log, model, []

    async def request(self, url, path, body, headers, **kw):
        self.paths.append(path)
        if path == "/v1/tokenizer":
            return _Resp(200, json.dumps({"model": self.model, **TokenizerSpec("sim", 4).json()}).encode())
        q = dict(p.split("=") for p in path.split("?")[1].split("&"))
        try:
            events, nxt = self.log.since(int(q["since"]), int(q["limit"]))
        except EventsGone as exc:
            return _Resp(410, json.dumps({"error": {"message": str(exc), "code": "kv_events_gone"}}).encode())
        return _Resp(200, json.dumps({"events": [e.json() for e in events], "next": nxt}).encode())


def kv_node(url: str = "http://a:1"):
    n = node(url)
    n.capacity.cache = CacheInfo(block_size=BS, prefix_caching=True, kv_events=True)
    return n


def test_stored_removed_and_cleared_give_the_exact_set():
    kv = NodeKv()
    kv.apply([{"type": "BlockStored", "block_hashes": [1, 2, 3], "block_size": BS},
              {"type": "BlockRemoved", "block_hashes": [2]}], max_blocks=100)
    assert kv.blocks == {1, 3} and kv.block_size == BS
    kv.apply([{"type": "AllBlocksCleared"}, {"type": "BlockStored", "block_hashes": [9], "block_size": BS}], 100)
    assert kv.blocks == {9} and kv.resyncs == 1
    kv.apply([{"type": "BlockStored", "block_hashes": list(range(10, 20)), "block_size": BS}], max_blocks=5)
    assert kv.overflow and not kv.blocks  # over the bound: estimate mode, no memory kept


def test_the_follower_mirrors_a_real_block_pool():
    log = KvEventLog(4096)
    pool = SimKvPool(64 * BS, BS, events=log)
    prompts = [list(range(i * 1000, i * 1000 + 5 * BS)) for i in range(20)]  # 100 blocks into 64: evictions
    for p in prompts:
        pool.release(pool.try_reserve(p, len(p) + 1))
    f = KvFollower(NodePool(log))
    n = kv_node()
    assert f.mode(n) == "estimate"
    asyncio.run(f.follow(n))
    assert f.nodes[n.url].blocks == set(pool._refs) and f.mode(n) == "precise"
    pool.clear()
    asyncio.run(f.follow(n))
    assert f.nodes[n.url].blocks == set()


def test_falling_off_the_ring_is_a_410_and_a_resync_from_the_oldest_event():
    log = KvEventLog(8)
    f = KvFollower(NodePool(log))
    n = kv_node()
    log.stored([1, 2], None, BS)
    asyncio.run(f.follow(n))
    assert f.nodes[n.url].blocks == {1, 2}
    for h in range(100, 120):  # 20 events into a ring of 8: the follower's cursor is gone
        log.stored([h], None, BS)
    log.removed([119])
    asyncio.run(f.follow(n))
    kv = f.nodes[n.url]
    assert kv.resyncs == 1 and kv.next_seq == log.next_seq
    # Only what the ring still holds: the old blocks 1, 2 are dropped, never invented.
    assert kv.blocks == set(range(113, 119)) and f.mode(n) == "precise"


def test_a_restarted_node_is_read_again_from_zero():
    log = KvEventLog(64)
    pool = NodePool(log)
    f = KvFollower(pool)
    n = kv_node()
    for h in range(10):
        log.stored([h], None, BS)
    asyncio.run(f.follow(n))
    pool.log = KvEventLog(64)  # restart: sequence numbers begin again
    pool.log.stored([77], None, BS)
    asyncio.run(f.follow(n))
    assert f.nodes[n.url].blocks == {77}


def test_a_node_without_events_or_with_a_stale_stream_is_estimated():
    f = KvFollower(NodePool(KvEventLog(8)), stale_s=0.0)
    plain = node("http://b:1")
    assert not f.offers_events(plain)
    n = kv_node()
    asyncio.run(f.follow(n))
    assert f.mode(n) == "estimate"  # stale_s=0: older than the bound at once


def test_precise_match_equals_what_the_engine_will_find_cached():
    log = KvEventLog(4096)
    pool = SimKvPool(4096 * BS, BS, events=log)
    tok = SimTokenizer(4)
    system = "You are a careful agent. " * 40
    first = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": "step one"}]})
    ids1 = tok.render_chat(chat_messages(first.messages), None)
    pool.release(pool.try_reserve(ids1, len(ids1) + 8))
    second = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": "step one"},
        {"role": "assistant", "content": "done"}, {"role": "user", "content": "step two " * 30}]})
    ids2 = tok.render_chat(chat_messages(second.messages), None)
    other = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "system", "content": "Another system prompt. " * 40}, {"role": "user", "content": "step one"}]})
    f = KvFollower(NodePool(log))
    a, b = kv_node("http://a:1"), kv_node("http://b:1")
    asyncio.run(f.follow(a))
    asyncio.run(f.follow(b))
    f.nodes[b.url].blocks.clear()  # b holds nothing
    got, prompt_len = asyncio.run(f.predict([a, b], second))
    assert got[a.url] == pool.cached_prefix_tokens(ids2) > 0 and got[b.url] == 0
    assert prompt_len == len(ids2)
    # The same conversation again: every full block but the one holding the last token.
    again, _ = asyncio.run(f.predict([a], first))
    assert again[a.url] == pool.cached_prefix_tokens(ids1) == (len(ids1) - 1) // BS * BS
    assert asyncio.run(f.predict([a], other))[0][a.url] == 0
    # Completions tokenize with the special tokens, as the node does.
    text = "x" * 400
    ids = tok.tokenize(text)
    pool.release(pool.try_reserve(ids, len(ids) + 1))
    asyncio.run(f.follow(a))
    comp = CompletionRequest.model_validate({"model": "m", "prompt": text})
    assert asyncio.run(f.predict([a], comp))[0][a.url] == (len(ids) - 1) // BS * BS
    assert block_hashes(ids, BS)[0] in f.nodes[a.url].blocks


def test_the_tokenizer_is_fetched_once_per_node_and_model_and_a_wrong_model_is_refused():
    log = KvEventLog(64)
    pool = NodePool(log, model="m")
    f = KvFollower(pool)
    n = kv_node()
    asyncio.run(f.follow(n))
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi " * 50}]})
    asyncio.run(f.predict([n], req))
    asyncio.run(f.predict([n], req))
    assert pool.paths.count("/v1/tokenizer") == 1
    pool.model = "other"
    f2 = KvFollower(pool)
    asyncio.run(f2.follow(n))
    assert asyncio.run(f2.predict([n], req)) == ({}, None)  # no tokenizer: estimate, no failure
