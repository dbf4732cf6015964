"""Routing policies: rank the eligible nodes for one request, best first.

The default, ``nearest_idle``, minimises the predicted time to first token::

    ttft = network RTT + queue wait on the node + prefill of this request's prompt

The node's last capacity document gives its own prediction for a reference request
(polled with ``?prompt_tokens=REF_PROMPT_TOKENS``): its queue wait and, by difference, its
prefill time per prompt token. Between two polls the router adds what it sent there
itself and the node could not yet report (``Node.pending``): each such request costs one
prefill ahead of ours, and once the node's sequence slots are full, a share of a decode
run. Without that correction a burst would all go to the node that looked idle at the
last poll (a stale signal herds). Near-ties are broken by power-of-two random choice on
the router's in-flight count.

The rest of the ranking is the failover order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from server.router.registry import Node
from server.router.warmth import load_penalty_ms

REF_PROMPT_TOKENS = 512
REF_MAX_TOKENS = 128
DEFAULT_PREFILL_TOKENS_PER_S = 2000.0  # only until a node reports its own figures
DEFAULT_TPOT_MS = 20.0
TIE_ABS_MS = 1.0
TIE_REL = 0.05


@dataclass(slots=True)
class Estimate:
    node: Node
    ttft_ms: float
    rtt_ms: float
    wait_ms: float
    prefill_ms: float
    load_ms: float = 0.0  # the model's load or wake time on this node (server/router/warmth.py)

    def reason(self) -> str:
        load = f" + model load/wake {self.load_ms:.1f}" if self.load_ms else ""
        return (f"predicted TTFT {self.ttft_ms:.1f} ms = RTT {self.rtt_ms:.1f} + queue wait {self.wait_ms:.1f}"
                f" + prefill {self.prefill_ms:.1f}{load} (node running {self.node.capacity.load.running if self.node.capacity else '?'},"
                f" router in flight {self.node.inflight})")


def estimate(node: Node, prompt_tokens: int, mean_max_tokens: float = REF_MAX_TOKENS / 2,
             model: str | None = None) -> Estimate:
    est = _estimate(node, prompt_tokens, mean_max_tokens)
    if model is not None and est.ttft_ms != float("inf"):
        est.load_ms = load_penalty_ms(node, model)
        est.ttft_ms += est.load_ms
    return est


def _estimate(node: Node, prompt_tokens: int, mean_max_tokens: float) -> Estimate:
    cap = node.capacity
    rtt = node.rtt_ms or 0.0
    if cap is None:
        return Estimate(node, float("inf"), rtt, float("inf"), 0.0)
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
    pending = node.pending
    wait += pending * per_token * prompt_tokens
    busy = load.running + load.waiting + pending
    overflow = max(0, busy - slots + 1) - max(0, busy_seen - slots + 1)
    if overflow > 0:  # no free slot: wait for running sequences to finish their decode
        wait += overflow / slots * step_ms * mean_max_tokens
    prefill = per_token * prompt_tokens
    return Estimate(node, rtt + wait + prefill, rtt, wait, prefill)


class Policy(Protocol):
    name: str

    def rank(self, nodes: list[Node], prompt_tokens: int, max_tokens: int,
             model: str | None = None) -> list[Estimate]: ...


class _Base:
    name = "base"

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()
        self.mean_max_tokens = REF_MAX_TOKENS / 2.0

    def _estimates(self, nodes: list[Node], prompt_tokens: int, max_tokens: int,
                   model: str | None = None) -> list[Estimate]:
        # Remaining decode of a running sequence is on average half its max_tokens.
        self.mean_max_tokens = 0.9 * self.mean_max_tokens + 0.1 * (max_tokens / 2.0)
        return [estimate(n, prompt_tokens, self.mean_max_tokens, model) for n in nodes]


class NearestIdle(_Base):
    name = "nearest_idle"

    def rank(self, nodes: list[Node], prompt_tokens: int, max_tokens: int,
             model: str | None = None) -> list[Estimate]:
        ests = sorted(self._estimates(nodes, prompt_tokens, max_tokens, model), key=lambda e: e.ttft_ms)
        if len(ests) < 2:
            return ests
        best = ests[0].ttft_ms
        tied = [e for e in ests if e.ttft_ms <= best + max(TIE_ABS_MS, TIE_REL * best)]
        if len(tied) >= 2:
            a, b = self.rng.sample(tied, 2)
            first = min((a, b), key=lambda e: (e.node.inflight + e.node.pending, e.ttft_ms))
            ests.remove(first)
            ests.insert(0, first)
        return ests


class RoundRobin(_Base):
    name = "round_robin"

    def __init__(self, rng: random.Random | None = None):
        super().__init__(rng)
        self._next = 0

    def rank(self, nodes: list[Node], prompt_tokens: int, max_tokens: int,
             model: str | None = None) -> list[Estimate]:
        ests = sorted(self._estimates(nodes, prompt_tokens, max_tokens, model), key=lambda e: e.node.url)
        if not ests:
            return ests
        k = self._next % len(ests)
        self._next += 1
        return ests[k:] + ests[:k]


class RandomChoice(_Base):
    name = "random"

    def rank(self, nodes: list[Node], prompt_tokens: int, max_tokens: int,
             model: str | None = None) -> list[Estimate]:
        ests = self._estimates(nodes, prompt_tokens, max_tokens, model)
        self.rng.shuffle(ests)
        return ests


class LeastLoaded(_Base):
    """Fewest outstanding requests (node-reported running + waiting, plus the router's pending)."""

    name = "least_loaded"

    def rank(self, nodes: list[Node], prompt_tokens: int, max_tokens: int,
             model: str | None = None) -> list[Estimate]:
        ests = self._estimates(nodes, prompt_tokens, max_tokens, model)
        self.rng.shuffle(ests)  # random among equals

        def load(e: Estimate) -> int:
            cap = e.node.capacity
            seen = cap.load.running + cap.load.waiting if cap else 0
            return seen + e.node.pending

        return sorted(ests, key=load)


POLICIES: dict[str, type[_Base]] = {
    p.name: p for p in (NearestIdle, RoundRobin, RandomChoice, LeastLoaded)
}


def make_policy(name: str, seed: int | None = None) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None
    return cls(random.Random(seed))
