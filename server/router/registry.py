"""The router's view of the fleet: one :class:`Node` record per upstream, kept by URL.

Nodes come from the command line, the fleet file or mDNS. Only nodes in this registry
are ever contacted (request bodies never choose an upstream).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from server.capacity.schema import Capacity
from server.router.breaker import CircuitBreaker

Source = Literal["static", "mdns"]
RTT_WINDOW = 10

# How a request to a node failed. The proxy's one rule (docs/router.md, "Failures"): a hard
# failure (refused or reset connection, a stream cut mid-way) trips the breaker at once;
# a timeout (at connect, before the first byte, or between chunks) counts one failure
# toward ``failure_threshold``, since a slow node may only be busy.
FailureOutcome = Literal["connect_error", "connect_timeout", "timeout", "upstream_disconnected", "upstream_timeout",
                         "bad_response"]
TIMEOUT_OUTCOMES: frozenset[str] = frozenset({"connect_timeout", "timeout", "upstream_timeout"})


@dataclass(slots=True)
class NodeSpec:
    """What the operator (or an mDNS announcement) says about a node."""

    url: str
    name: str | None = None
    api_key: str | None = None  # the key the router presents to this node
    zone: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    source: Source = "static"
    node_id: str | None = None


def normalize_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.username is not None or parts.password is not None:
        # Never echoed: the URL would land in /v1/fleet, the MCP tools and every log line.
        shown = f"{parts.scheme}://***@{parts.netloc.rpartition('@')[2]}"
        raise ValueError(f"node URL must not carry credentials ({shown}): give the node's key as api_key, "
                         "api_key_env or api_key_file in the fleet file")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"node URL must be http(s)://host:port, got {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]  # accept an OpenAI-style base URL too
    return f"{parts.scheme}://{parts.netloc}{path}"


@dataclass(slots=True, eq=False)
class Node:
    url: str
    name: str
    api_key: str | None
    zone: str | None
    labels: dict[str, str]
    source: Source
    node_id: str | None = None
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    capacity: Capacity | None = None
    capacity_at: float = 0.0  # monotonic time of the last good poll
    rtt_ms: float | None = None  # min of the recent capacity-poll round trips
    rtt_samples: deque[float] = field(default_factory=lambda: deque(maxlen=RTT_WINDOW))
    last_error: str | None = None
    # The router's own accounting, so a burst between two polls does not herd onto one node.
    inflight: int = 0
    dispatched_since_poll: int = 0
    dispatched_prefill_tokens: int = 0  # uncached prompt tokens sent since the poll
    lane_free: float = 0.0  # monotonic time the prefills the router sent since the poll should end
    completed_since_poll: int = 0
    requests: int = 0
    failures: int = 0
    auth_headers: dict[str, str] = field(default_factory=dict)
    named: bool = False  # the operator (or the announcement) gave the name

    @classmethod
    def from_spec(cls, spec: NodeSpec, breaker: CircuitBreaker) -> Node:
        url = normalize_url(spec.url)
        node = cls(url=url, name=spec.name or urlsplit(url).netloc, api_key=spec.api_key, zone=spec.zone,
                   labels=dict(spec.labels), source=spec.source, node_id=spec.node_id, breaker=breaker,
                   named=bool(spec.name))
        if spec.api_key:
            node.auth_headers = {"authorization": f"Bearer {spec.api_key}"}
        return node

    @property
    def pending(self) -> int:
        """Requests sent since the last poll that the poll could not have seen yet."""
        return max(0, self.dispatched_since_poll - self.completed_since_poll)

    @property
    def finished_seen(self) -> int:
        """Requests the router sent before the last poll that have completed since: at
        least this many of the running or waiting the poll counted are gone. An agent's
        next step, sent the moment its last one ends, would otherwise see that step
        still holding the node."""
        return max(0, self.completed_since_poll - self.dispatched_since_poll)

    def serves(self, model: str) -> bool:
        return self.capacity is not None and any(m.id == model for m in self.capacity.models)

    def is_ready(self, now: float) -> bool:
        return (self.capacity is not None and self.capacity.state == "ready"
                and self.breaker.allows_requests(now))

    def on_dispatch(self, prefill_tokens: int = 0, prefill_done_at: float = 0.0) -> None:
        self.lane_free = max(self.lane_free, prefill_done_at)
        self.inflight += 1
        self.dispatched_since_poll += 1
        self.dispatched_prefill_tokens += prefill_tokens
        self.requests += 1

    def on_done(self) -> None:
        self.inflight = max(0, self.inflight - 1)
        self.completed_since_poll += 1

    def record_failure(self, outcome: FailureOutcome, now: float | None = None) -> bool:
        """The one place a failed request is booked against this node: the failure count,
        ``last_error``, and the breaker (a timeout counts, a hard failure trips). True when
        the breaker was tripped outright."""
        now = time.monotonic() if now is None else now
        self.failures += 1
        self.last_error = outcome
        if outcome in TIMEOUT_OUTCOMES:
            self.breaker.record_failure(now)
            return False
        self.breaker.trip(now)
        return True

    def on_poll(self, capacity: Capacity, rtt_ms: float, now: float) -> None:
        self.capacity = capacity
        self.capacity_at = now
        # The minimum filters out the node's own time to build the document and scheduling
        # noise, leaving the network path (the way TCP estimates min RTT).
        self.rtt_samples.append(rtt_ms)
        self.rtt_ms = min(self.rtt_samples)
        self.dispatched_since_poll = 0
        self.dispatched_prefill_tokens = 0
        self.lane_free = 0.0
        self.completed_since_poll = 0
        self.last_error = None
        ident = capacity.identity
        self.node_id = ident.node_id
        if self.zone is None:
            self.zone = ident.zone
        for k, v in ident.labels.items():
            self.labels.setdefault(k, v)

    def view(self, now: float) -> dict[str, Any]:
        """The /v1/fleet entry (never includes the node's API key)."""
        return {
            "name": self.name,
            "url": self.url,
            "node_id": self.node_id,
            "source": self.source,
            "zone": self.zone,
            "labels": self.labels,
            "health": self.breaker.poll_state(now),
            "ready": self.is_ready(now),
            "consecutive_failures": self.breaker.failures,
            "trips": self.breaker.trips,
            "last_error": self.last_error,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "capacity_age_s": None if self.capacity is None else round(now - self.capacity_at, 3),
            "inflight": self.inflight,
            "pending_since_poll": self.pending,
            "requests": self.requests,
            "failures": self.failures,
            "simulated": bool(self.capacity and self.capacity.identity.simulated),
            "capacity": None if self.capacity is None else self.capacity.model_dump(mode="json"),
        }


class Registry:
    def __init__(self, failure_threshold: int = 3, success_threshold: int = 2, open_s: float = 2.0):
        self._nodes: dict[str, Node] = {}
        self._breaker_args = (failure_threshold, success_threshold, open_s)

    def adopt_name(self, node: Node, name: str) -> None:
        """Use the node's own name once known, unless the operator named it or it would clash."""
        if node.named or not name or node.name == name:
            return
        if any(n.name == name for n in self._nodes.values() if n is not node):
            return
        node.name = name

    def add(self, spec: NodeSpec) -> Node:
        url = normalize_url(spec.url)
        node = self._nodes.get(url)
        if node is not None:
            return node
        ft, st, op = self._breaker_args
        node = Node.from_spec(spec, CircuitBreaker(ft, st, op))
        names = {n.name for n in self._nodes.values()}
        if node.name in names:
            node.name = f"{node.name}@{urlsplit(url).netloc}"
        self._nodes[url] = node
        return node

    def remove(self, url: str) -> Node | None:
        return self._nodes.pop(normalize_url(url), None)

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def find(self, ref: str) -> Node | None:
        """A node by name, node_id or URL (the X-Edgefleet-Node pin and the MCP tools)."""
        for n in self._nodes.values():
            if ref in (n.name, n.node_id, n.url):
                return n
        return None

    def models(self, now: float | None = None) -> dict[str, list[Node]]:
        now = time.monotonic() if now is None else now
        out: dict[str, list[Node]] = {}
        for n in self._nodes.values():
            if n.capacity is None:
                continue
            for m in n.capacity.models:
                out.setdefault(m.id, []).append(n)
        return out
