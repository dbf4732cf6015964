"""The cache-aware cost model and the session policies on constructed fleets."""

from server.capacity.schema import PriorityQueue
from server.router.policy import RequestInfo, make_policy
from server.router.prefix_index import BLOCK_CHARS, PrefixIndex, block_hashes
from tests.router.helpers import node

CONTEXT = block_hashes("c" * BLOCK_CHARS * 300)  # ~19k tokens of conversation
PROMPT = 300 * 64 + 100


def fleet_with_context(**holder_kw):
    idx = PrefixIndex()
    holder = node("http://holder:1", rtt_ms=5.0, prefill_tps=2000.0, **holder_kw)
    idle_far = node("http://far:1", rtt_ms=40.0, prefill_tps=4000.0)
    idx.insert(holder.url, CONTEXT)
    return idx, holder, idle_far


def test_cache_beats_an_idle_faster_node():
    idx, holder, far = fleet_with_context()
    req = RequestInfo(PROMPT, 64, CONTEXT)
    ranked = make_policy("nearest_idle", seed=1, index=idx).rank([far, holder], req)
    assert ranked[0].node is holder
    assert ranked[0].cached_tokens == 300 * 64 and ranked[1].cached_tokens == 0
    assert ranked[0].prefill_ms < 100 < ranked[1].prefill_ms  # 100 uncached tokens vs ~19k
    # Without the index (the old model) the idle, faster node wins.
    assert make_policy("cache_blind", seed=1, index=idx).rank([far, holder], req)[0].node is far


def test_a_long_queue_beats_the_cache():
    # Re-prefilling 19k tokens elsewhere costs ~4.8 s; a 10 s queue on the holder costs more.
    idx, holder, far = fleet_with_context(wait_ms=10_000.0, waiting=20)
    req = RequestInfo(PROMPT, 64, CONTEXT)
    assert make_policy("nearest_idle", seed=1, index=idx).rank([far, holder], req)[0].node is far
    # A 2 s queue is still cheaper than re-prefilling: the holder keeps it. No threshold decides.
    idx, holder, far = fleet_with_context(wait_ms=2_000.0, waiting=4)
    assert make_policy("nearest_idle", seed=1, index=idx).rank([far, holder], req)[0].node is holder


def test_priority_ignores_lower_priority_queue():
    # The node's polled prediction is for a priority-0 request: its 20 queued background
    # calls (priority 10, 20k tokens, 10 s of prefill) are not in it.
    idx, holder, far = fleet_with_context(wait_ms=100.0, waiting=20)
    holder.capacity.load.waiting_prompt_tokens = 20_000
    holder.capacity.load.queue_by_priority = [PriorityQueue(priority=10, waiting=20, waiting_prompt_tokens=20_000)]
    p = make_policy("nearest_idle", seed=1, index=idx)
    for urgent in (None, 0, 5):  # none of them waits behind the background class
        first = p.rank([far, holder], RequestInfo(PROMPT, 64, CONTEXT, priority=urgent))[0]
        assert first.node is holder and first.wait_ms < 200, urgent
    background = p.rank([far, holder], RequestInfo(PROMPT, 64, CONTEXT, priority=10))
    assert background[0].node is far  # same class: it waits behind all of it (10 s > 4.8 s)
    assert background[1].wait_ms > 9_000


def test_urgent_request_skips_the_default_class():
    idx, holder, far = fleet_with_context(wait_ms=10_000.0, waiting=10)  # 10 s of priority-0 work
    holder.capacity.load.queue_by_priority = [PriorityQueue(priority=0, waiting=10, waiting_prompt_tokens=20_000)]
    p = make_policy("nearest_idle", seed=1, index=idx)
    assert p.rank([far, holder], RequestInfo(PROMPT, 64, CONTEXT))[0].node is far
    urgent = p.rank([far, holder], RequestInfo(PROMPT, 64, CONTEXT, priority=-5))[0]
    assert urgent.node is holder and urgent.wait_ms < 100


def test_near_tie_does_not_move_away_from_context():
    idx = PrefixIndex()
    a, b = node("http://a:1"), node("http://b:1")
    h = block_hashes("x" * BLOCK_CHARS * 2)
    idx.insert(a.url, h)
    a.inflight = 9  # the tie-break would prefer b on in-flight count
    p = make_policy("nearest_idle", seed=3, index=idx)
    assert all(p.rank([a, b], RequestInfo(200, 16, h))[0].node is a for _ in range(20))


def test_cache_aware_prefers_match_until_imbalanced():
    idx, holder, far = fleet_with_context()
    p = make_policy("cache_aware", seed=1, index=idx)
    req = RequestInfo(PROMPT, 64, CONTEXT)
    assert p.rank([far, holder], req)[0].node is holder
    # A short match (under the cache threshold) goes to the node with the smallest cache.
    assert p.rank([holder, far], RequestInfo(PROMPT * 10, 64, CONTEXT))[0].node is far
    holder.capacity.load.running = 100  # imbalance: 100 vs 0 > 64 absolute and > 1.5x
    assert p.rank([far, holder], req)[0].node is far


def test_session_sticky_is_consistent_and_falls_back():
    nodes = [node(f"http://n{i}:1") for i in range(4)]
    p = make_policy("session_sticky", seed=1)
    homes = {s: p.rank(nodes, RequestInfo(100, 16, session=s))[0].node for s in (f"s{i}" for i in range(40))}
    assert len(set(homes.values())) >= 3  # sessions spread
    assert all(p.rank(nodes, RequestInfo(100, 16, session=s))[0].node is n for s, n in homes.items())
    gone = nodes[0]
    rest = nodes[1:]
    for s, n in homes.items():  # only the sessions of the node that left move
        if n is not gone:
            assert p.rank(rest, RequestInfo(100, 16, session=s))[0].node is n
    # No session key: nearest_idle (the faster node for a long prompt).
    fast = node("http://fast:1", prefill_tps=10_000.0)
    assert p.rank([*rest, fast], RequestInfo(5000, 16))[0].node is fast


def test_polled_queue_drains_with_the_poll_age():
    n = node("http://a:1", wait_ms=2000.0)  # polled at monotonic 0.0
    p = make_policy("nearest_idle", seed=1)
    assert abs(p.rank([n], RequestInfo(100, 16))[0].wait_ms - 2000.0) < 1e-6  # no clock: as polled
    assert abs(p.rank([n], RequestInfo(100, 16, now=1.5))[0].wait_ms - 500.0) < 1e-6
    assert p.rank([n], RequestInfo(100, 16, now=5.0))[0].wait_ms == 0.0
    # cache_blind keeps the old estimate exactly.
    assert abs(make_policy("cache_blind").rank([n], RequestInfo(100, 16, now=1.5))[0].wait_ms - 2000.0) < 1e-6


def test_own_dispatches_form_a_prefill_lane_that_drains():
    n = node("http://a:1", prefill_tps=1000.0)  # polled at monotonic 0.0, idle
    p = make_policy("nearest_idle", seed=1)
    first = p.rank([n], RequestInfo(1000, 16, now=0.0))[0]
    n.on_dispatch(first.prefill_tokens, 0.0 + (first.wait_ms + first.prefill_ms) / 1000.0)  # busy until ~1.0 s
    assert abs(p.rank([n], RequestInfo(100, 16, now=0.5))[0].wait_ms - 500.0) < 5.0
    # Its prefill is done at 1.0 s: still pending (decoding), but no longer ahead of ours.
    assert n.pending == 1 and p.rank([n], RequestInfo(100, 16, now=1.2))[0].wait_ms == 0.0


def test_an_agents_last_step_that_completed_no_longer_holds_the_node():
    # Polled while the chain's previous step ran: one slot, one running, a 2 s slot wait.
    idx, holder, far = fleet_with_context(wait_ms=2_000.0, running=1, slots=1)
    holder.on_dispatch()  # that step was sent before the poll ...
    holder.on_poll(holder.capacity, 5.0, 0.0)
    holder.on_done()  # ... and the router saw it end: nothing it counted is left
    assert holder.finished_seen == 1 and holder.pending == 0
    p = make_policy("nearest_idle", seed=1, index=idx)
    first = p.rank([far, holder], RequestInfo(PROMPT, 64, CONTEXT, now=0.01))[0]
    assert first.node is holder and first.wait_ms == 0.0
    # Without the router's own completion the polled wait stands (and the idle node wins).
    idx, holder, far = fleet_with_context(wait_ms=6_000.0, running=1, slots=1)
    second = make_policy("nearest_idle", seed=1, index=idx).rank([far, holder], RequestInfo(PROMPT, 64, CONTEXT, now=0.01))
    assert second[0].node is far and second[1].wait_ms > 5_000
    # A request sent after the poll that completes is not one the poll counted.
    holder.on_dispatch()
    holder.on_done()
    assert holder.finished_seen == 0
