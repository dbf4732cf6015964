"""Routing policies over made-up capacity documents."""

import random
from collections import Counter

from server.router.policy import RequestInfo, estimate, make_policy
from tests.router.helpers import node


def test_estimate_sums_rtt_wait_and_prefill():
    n = node("http://a:1", rtt_ms=5.0, prefill_tps=1000.0, wait_ms=100.0)
    e = estimate(n, prompt_tokens=200)
    assert e.rtt_ms == 5.0 and abs(e.wait_ms - 100.0) < 1e-6 and abs(e.prefill_ms - 200.0) < 1e-6
    assert abs(e.ttft_ms - 305.0) < 1e-6


def test_nearest_idle_prefers_fast_node_and_weighs_rtt_against_prefill():
    fast_far = node("http://fast:1", rtt_ms=40.0, prefill_tps=10_000.0)
    slow_near = node("http://slow:1", rtt_ms=1.0, prefill_tps=1_000.0)
    p = make_policy("nearest_idle", seed=1)
    # Long prompt: prefill dominates (1000 ms vs 40 + 100 ms).
    assert p.rank([slow_near, fast_far], RequestInfo(1000, 16))[0].node is fast_far
    # Tiny prompt: the round trip dominates (1 + 10 ms vs 40 + 1 ms).
    assert p.rank([slow_near, fast_far], RequestInfo(10, 16))[0].node is slow_near


def test_pending_dispatches_spread_a_burst():
    """Between polls the router's own dispatches count, so a burst does not herd."""
    a = node("http://a:1", prefill_tps=2000.0)
    b = node("http://b:1", prefill_tps=1500.0)
    for policy in ("nearest_idle", "cache_blind"):
        for n in (a, b):
            n.on_poll(n.capacity, 1.0, 0.0)
        p = make_policy(policy, seed=2)
        chosen = Counter()
        for _ in range(20):
            first = p.rank([a, b], RequestInfo(500, 64))[0]
            first.node.on_dispatch(first.prefill_tokens)  # as Router.open_upstream does
            chosen[first.node.url] += 1
        assert chosen["http://a:1"] > chosen["http://b:1"] > 0, policy


def test_full_slots_add_decode_wait():
    n = node("http://a:1", slots=2, running=1, tpot_ms=10.0)
    before = estimate(n, 100, 100).ttft_ms
    n.on_dispatch()  # the router's request fills the second slot
    n.on_dispatch()  # this one would have to wait for a running sequence to finish
    after = estimate(n, 100, 100).ttft_ms
    assert after - before > 2 * 100  # two queued prefills plus a share of a decode run


def test_ties_broken_by_power_of_two_on_inflight():
    a = node("http://a:1")
    b = node("http://b:1")
    a.inflight = 5
    p = make_policy("nearest_idle", seed=3)
    assert all(p.rank([a, b], RequestInfo(100, 16))[0].node is b for _ in range(10))


def test_round_robin_cycles_and_random_uses_all():
    nodes = [node(f"http://n{i}:1") for i in range(3)]
    rr = make_policy("round_robin")
    firsts = [rr.rank(nodes, RequestInfo(10, 10))[0].node.url for _ in range(6)]
    assert firsts[:3] == sorted(set(firsts)) and firsts[3:] == firsts[:3]
    rnd = make_policy("random", seed=4)
    assert len({rnd.rank(nodes, RequestInfo(10, 10))[0].node.url for _ in range(50)}) == 3


def test_least_loaded_counts_node_load_and_pending():
    a = node("http://a:1", running=3)
    b = node("http://b:1", running=1)
    p = make_policy("least_loaded", seed=5)
    assert p.rank([a, b], RequestInfo(10, 10))[0].node is b
    for _ in range(3):
        b.on_dispatch()
    assert p.rank([a, b], RequestInfo(10, 10))[0].node is a


def test_unknown_policy():
    import pytest

    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("fastest")


def test_ranking_is_failover_order():
    nodes = [node(f"http://n{i}:1", wait_ms=100.0 * i) for i in range(4)]
    random.shuffle(nodes)
    ranked = make_policy("nearest_idle", seed=6).rank(nodes, RequestInfo(10, 10))
    assert [e.node.url for e in ranked] == [f"http://n{i}:1" for i in range(4)]
