"""Routing policies: rank the eligible nodes for one request, best first.

The default, ``nearest_idle``, minimises the predicted time to first token::

    ttft = network RTT + queue wait on the node + prefill(prompt tokens - predicted cached tokens)

The node's last capacity document gives its own prediction for a reference request
(polled with ``?prompt_tokens=REF_PROMPT_TOKENS``): its queue wait and, by difference, its
prefill time per prompt token. Between two polls the router adds what it sent there
itself and the node could not yet report (``Node.pending``): each such request costs the
prefill of its uncached tokens ahead of ours, and once the node's sequence slots are full,
a share of a decode run. Without that correction a burst would all go to the node that
looked idle at the last poll (a stale signal herds). The cached tokens come from the
router's prefix index (server/router/prefix_index.py): the node holding a conversation's
context wins exactly when its queue costs less than re-prefilling the context elsewhere;
there is no threshold to tune. With a per-priority queue in the capacity document
(``load.queue_by_priority``) the wait counts only work that runs before this request
(priority <= ours; lower runs first, as in vLLM): the polled prediction is for priority
``POLL_PRIORITY``, and the classes between that and the request's are added or removed. Near-ties are broken by power-of-two
random choice on the router's in-flight count, among the nodes holding the most context.

``cache_blind`` is the same model without the index (the pre-session router), kept for
comparison; ``cache_aware`` and ``session_sticky`` are the usual cache routers (SGLang's
gateway, a consistent hash of the session key), also for comparison.

The rest of the ranking is the failover order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import TYPE_CHECKING, Protocol

from server.router.registry import Node
from server.router.warmth import load_penalty_ms

if TYPE_CHECKING:
    from server.router.prefix_index import PrefixIndex

REF_PROMPT_TOKENS = 512
REF_MAX_TOKENS = 128
DEFAULT_PREFILL_TOKENS_PER_S = 2000.0  # only until a node reports its own figures
DEFAULT_TPOT_MS = 20.0
TIE_ABS_MS = 1.0
TIE_REL = 0.05


@dataclass(slots=True)
class RequestInfo:
    """What a policy knows about one request."""

    prompt_tokens: int
    max_tokens: int
    hashes: list[int] = field(default_factory=list)  # chained prefix block hashes (prefix_index)
    session: str | None = None  # hash of the session key, never the key
    priority: int | None = None  # lower runs first; None: the node's default (0)
    now: float | None = None  # monotonic time of the decision: the polled queue has drained since
    precise: dict[str, int] | None = None  # node url -> cached tokens from its KV events (kv_follow)
    model: str | None = None  # multi-model nodes: add the model's load/wake time where it is cold


@dataclass(slots=True)
class Estimate:
    node: Node
    ttft_ms: float
    rtt_ms: float
    wait_ms: float
    prefill_ms: float
    cached_tokens: int = 0
    prompt_tokens: int = 0
    load_ms: float = 0.0  # the model's load or wake time on this node (server/router/warmth.py)

    @property
    def prefill_tokens(self) -> int:
        return max(0, self.prompt_tokens - self.cached_tokens)

    def reason(self) -> str:
        load = f" + model load/wake {self.load_ms:.1f}" if self.load_ms else ""
        return (f"predicted TTFT {self.ttft_ms:.1f} ms = RTT {self.rtt_ms:.1f} + queue wait {self.wait_ms:.1f}"
                f" + prefill {self.prefill_ms:.1f} of {self.prefill_tokens} uncached tokens{load}"
                f" ({self.cached_tokens} predicted cached; node running "
                f"{self.node.capacity.load.running if self.node.capacity else '?'}, router in flight {self.node.inflight})")


POLL_PRIORITY = 0  # the poller asks the node for the prediction of a request of this priority


def _priority_shift(load: object, priority: int | None) -> tuple[int, int] | None:
    """How the queue ahead of a request of ``priority`` differs from the polled one, as
    (requests, prompt tokens): positive when more waits ahead of it, negative when less.
    The node's polled prediction counts only waiting work of priority <= POLL_PRIORITY
    (lower runs first). None when the node does not report its queue per priority."""
    classes = getattr(load, "queue_by_priority", None)
    if not classes:
        return None
    p = POLL_PRIORITY if priority is None else priority
    if p >= POLL_PRIORITY:
        sel = [q for q in classes if POLL_PRIORITY < q.priority <= p]
        sign = 1
    else:
        sel = [q for q in classes if p < q.priority <= POLL_PRIORITY]
        sign = -1
    return sign * sum(q.waiting for q in sel), sign * sum(q.waiting_prompt_tokens for q in sel)


def estimate(node: Node, prompt_tokens: int, mean_max_tokens: float = REF_MAX_TOKENS / 2,
             cached_tokens: int = 0, priority: int | None = None, cache_aware: bool = False,
             now: float | None = None, model: str | None = None) -> Estimate:
    """Predicted TTFT of a request on ``node``. ``cache_aware``: the router's own pending
    dispatches cost what they really had to prefill (their uncached tokens), not a copy
    of this request's prompt each (the pre-session estimate). ``model``: add the model's
    load or wake time where it is not loaded on the node (server/router/warmth.py)."""
    est = _estimate(node, prompt_tokens, mean_max_tokens, cached_tokens, priority, cache_aware, now)
    if model is not None and est.ttft_ms != float("inf"):
        est.load_ms = load_penalty_ms(node, model)
        est.ttft_ms += est.load_ms
    return est


def _estimate(node: Node, prompt_tokens: int, mean_max_tokens: float, cached_tokens: int,
              priority: int | None, cache_aware: bool, now: float | None) -> Estimate:
    cap = node.capacity
    rtt = node.rtt_ms or 0.0
    if cap is None:
        return Estimate(node, float("inf"), rtt, float("inf"), 0.0, cached_tokens, prompt_tokens)
    load, perf, pred = cap.load, cap.performance, cap.prediction
    slots = max(1, load.max_concurrent_sequences)
    step_ms = perf.tpot_p50_ms or DEFAULT_TPOT_MS
    if pred is not None and pred.prompt_tokens > 0:
        # The node's prediction for the reference prompt, minus that prompt's own prefill,
        # is what any request would wait there (slot wait, queued prefills, a decode step).
        if perf.prefill_tokens_per_s:
            per_token = 1000.0 / perf.prefill_tokens_per_s
        else:
            per_token = max(0.0, pred.predicted_ttft_ms - pred.predicted_queue_wait_ms) / pred.prompt_tokens
        wait = max(0.0, pred.predicted_ttft_ms - per_token * pred.prompt_tokens)
        busy_seen = load.running + load.waiting  # the node's own wait already covers these
    else:
        per_token = 1000.0 / (perf.prefill_tokens_per_s or DEFAULT_PREFILL_TOKENS_PER_S)
        wait = load.waiting_prompt_tokens * per_token
        busy_seen = min(load.running + load.waiting, slots - 1)
    gone = 0
    if now is not None and cache_aware:
        # The node has worked off its polled queue for as long as the poll is old (what was
        # sent since is counted below), and the polled requests the router saw complete
        # no longer hold their share of it.
        wait = max(0.0, wait - 1000.0 * max(0.0, now - node.capacity_at))
        gone = min(node.finished_seen, load.running + load.waiting)
        if gone and busy_seen:
            wait *= max(0, busy_seen - gone) / busy_seen
    waiting = load.waiting
    shift = _priority_shift(load, priority)
    if shift is not None:  # only work that runs before ours counts (priority <= ours)
        p = POLL_PRIORITY if priority is None else priority
        ahead_n = sum(q.waiting for q in load.queue_by_priority if q.priority <= p)
        if pred is not None and pred.prompt_tokens > 0:
            wait = max(0.0, wait + shift[1] * per_token)  # the polled wait counted the class of POLL_PRIORITY
        else:
            wait = sum(q.waiting_prompt_tokens for q in load.queue_by_priority if q.priority <= p) * per_token
        waiting = min(load.waiting, ahead_n)
        busy_seen = min(busy_seen, load.running + waiting)
    pending = node.pending
    if now is not None and cache_aware:
        # The router's own dispatches since the poll, as a prefill lane it keeps itself:
        # each one moved ``lane_free`` to when its prefill should end. A request whose
        # prefill is done no longer delays ours, even before it completes.
        wait = max(wait, 1000.0 * (node.lane_free - now))
    elif cache_aware and node.dispatched_since_poll:
        wait += pending * per_token * node.dispatched_prefill_tokens / node.dispatched_since_poll
    else:
        wait += pending * per_token * prompt_tokens
    busy = max(0, load.running + waiting - gone) + pending
    overflow = max(0, busy - slots + 1) - max(0, busy_seen - slots + 1)
    if overflow > 0:  # no free slot: wait for running sequences to finish their decode
        wait += overflow / slots * step_ms * mean_max_tokens
    cached_tokens = max(0, min(cached_tokens, prompt_tokens - 1))  # the last token is always computed
    prefill = per_token * (prompt_tokens - cached_tokens)
    return Estimate(node, rtt + wait + prefill, rtt, wait, prefill, cached_tokens, prompt_tokens)


class Policy(Protocol):
    name: str
    mean_max_tokens: float

    def rank(self, nodes: list[Node], req: RequestInfo) -> list[Estimate]: ...


class _Base:
    name = "base"
    uses_cache = True

    def __init__(self, rng: random.Random | None = None, index: PrefixIndex | None = None):
        self.rng = rng or random.Random()
        self.index = index
        self.mean_max_tokens = REF_MAX_TOKENS / 2.0

    def cached_tokens(self, node: Node, req: RequestInfo) -> int:
        if not self.uses_cache:
            return 0
        if req.precise and node.url in req.precise:
            return req.precise[node.url]
        if self.index is None or not req.hashes:
            return 0
        return self.index.match(node.url, req.hashes, req.session) * self.index.block_tokens

    def _estimates(self, nodes: list[Node], req: RequestInfo) -> list[Estimate]:
        # Remaining decode of a running sequence is on average half its max_tokens.
        self.mean_max_tokens = 0.9 * self.mean_max_tokens + 0.1 * (req.max_tokens / 2.0)
        return [estimate(n, req.prompt_tokens, self.mean_max_tokens, self.cached_tokens(n, req), req.priority,
                         cache_aware=self.uses_cache, now=req.now, model=req.model) for n in nodes]


def _load(e: Estimate) -> int:
    cap = e.node.capacity
    seen = cap.load.running + cap.load.waiting if cap else 0
    return seen + e.node.pending


class NearestIdle(_Base):
    name = "nearest_idle"

    def rank(self, nodes: list[Node], req: RequestInfo) -> list[Estimate]:
        ests = sorted(self._estimates(nodes, req), key=lambda e: e.ttft_ms)
        if len(ests) < 2:
            return ests
        best = ests[0]
        # A near-tie never moves a request away from the node holding the most of its context.
        tied = [e for e in ests if e.ttft_ms <= best.ttft_ms + max(TIE_ABS_MS, TIE_REL * best.ttft_ms)
                and e.cached_tokens >= best.cached_tokens]
        if len(tied) >= 2:
            a, b = self.rng.sample(tied, 2)
            first = min((a, b), key=lambda e: (e.node.inflight + e.node.pending, e.ttft_ms))
            ests.remove(first)
            ests.insert(0, first)
        return ests


class CacheBlind(NearestIdle):
    """``nearest_idle`` as it was before the prefix index: every prompt prefilled in full."""

    name = "cache_blind"
    uses_cache = False


class RoundRobin(_Base):
    name = "round_robin"
    uses_cache = False

    def __init__(self, rng: random.Random | None = None, index: PrefixIndex | None = None):
        super().__init__(rng, index)
        self._next = 0

    def rank(self, nodes: list[Node], req: RequestInfo) -> list[Estimate]:
        ests = sorted(self._estimates(nodes, req), key=lambda e: e.node.url)
        if not ests:
            return ests
        k = self._next % len(ests)
        self._next += 1
        return ests[k:] + ests[:k]


class RandomChoice(_Base):
    name = "random"
    uses_cache = False

    def rank(self, nodes: list[Node], req: RequestInfo) -> list[Estimate]:
        ests = self._estimates(nodes, req)
        self.rng.shuffle(ests)
        return ests


class LeastLoaded(_Base):
    """Fewest outstanding requests (node-reported running + waiting, plus the router's pending)."""

    name = "least_loaded"
    uses_cache = False

    def rank(self, nodes: list[Node], req: RequestInfo) -> list[Estimate]:
        ests = self._estimates(nodes, req)
        self.rng.shuffle(ests)  # random among equals
        return sorted(ests, key=_load)


class CacheAware(_Base):
    """SGLang's gateway policy, for comparison: while the fleet is balanced, the node with
    the longest prefix match if it covers more than ``CACHE_THRESHOLD`` of the prompt, else
    the node with the smallest cache (the most room); once the load is imbalanced
    (max - min > ``BALANCE_ABS`` and max > ``BALANCE_REL`` x min requests), the least loaded.
    The constants are the defaults SGLang's router documents."""

    name = "cache_aware"
    CACHE_THRESHOLD = 0.3
    BALANCE_ABS = 64
    BALANCE_REL = 1.5

    def rank(self, nodes: list[Node], req: RequestInfo) -> list[Estimate]:
        ests = self._estimates(nodes, req)
        self.rng.shuffle(ests)
        by_load = sorted(ests, key=_load)
        if len(ests) < 2:
            return by_load
        lo, hi = _load(by_load[0]), _load(by_load[-1])
        if hi - lo > self.BALANCE_ABS and hi > self.BALANCE_REL * lo:
            return by_load
        best = max(ests, key=lambda e: e.cached_tokens)
        if best.cached_tokens > self.CACHE_THRESHOLD * max(1, req.prompt_tokens):
            first = best
        else:
            index = self.index
            first = min(ests, key=lambda e: index.blocks(e.node.url) if index else 0)
        by_load.remove(first)
        return [first, *by_load]


class SessionSticky(_Base):
    """A consistent (rendezvous) hash of the session key over the eligible nodes: a session
    stays on its node while that node is eligible, and only the sessions of a node that
    leaves move. Without a session key: ``nearest_idle``."""

    name = "session_sticky"

    def __init__(self, rng: random.Random | None = None, index: PrefixIndex | None = None):
        super().__init__(rng, index)
        self._fallback = NearestIdle(rng, index)

    def rank(self, nodes: list[Node], req: RequestInfo) -> list[Estimate]:
        if req.session is None:
            ranked = self._fallback.rank(nodes, req)
            self.mean_max_tokens = self._fallback.mean_max_tokens
            return ranked
        ests = self._estimates(nodes, req)
        key = req.session.encode()
        return sorted(ests, key=lambda e: blake2b(key + e.node.url.encode(), digest_size=8).digest(), reverse=True)


POLICIES: dict[str, type[_Base]] = {
    p.name: p for p in (NearestIdle, CacheBlind, CacheAware, SessionSticky, RoundRobin, RandomChoice, LeastLoaded)
}


def make_policy(name: str, seed: int | None = None, index: PrefixIndex | None = None) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None
    return cls(random.Random(seed), index)
