"""Prometheus metrics of one router (own registry, so several routers can live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class RouterMetrics:
    def __init__(self, index: Any = None) -> None:
        self.index = index  # server.router.prefix_index.PrefixIndex
        self.registry = CollectorRegistry()
        self.requests = Counter("edgefleet_router_requests", "Requests by node and outcome",
                                ["node", "status"], registry=self.registry)
        self.failovers = Counter("edgefleet_router_failovers", "Attempts moved to another node",
                                 registry=self.registry)
        self.rate_limited = Counter("edgefleet_router_rate_limited", "Requests refused by a key limit",
                                    registry=self.registry)
        self.latency = Histogram("edgefleet_router_request_seconds", "End-to-end latency through the router",
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.discovery_refused = Counter("edgefleet_router_discovery_refused", "mDNS announcements not admitted",
                                         ["reason"], registry=self.registry)
        self.node_up = Gauge("edgefleet_router_node_up", "1 if the node takes traffic", ["node"],
                             registry=self.registry)
        self.node_inflight = Gauge("edgefleet_router_node_inflight", "Router requests in flight per node",
                                   ["node"], registry=self.registry)
        self.node_rtt = Gauge("edgefleet_router_node_rtt_ms", "Capacity poll round trip", ["node"],
                              registry=self.registry)
        self.predicted_cached = Counter(
            "edgefleet_router_predicted_cached_tokens",
            "Cached prompt tokens the router predicted, on requests whose node reported cached_tokens",
            ["node"], registry=self.registry)
        self.reported_cached = Counter(
            "edgefleet_router_reported_cached_tokens", "Cached prompt tokens the nodes reported (usage)",
            ["node"], registry=self.registry)
        self.index_blocks = Gauge("edgefleet_router_prefix_index_blocks",
                                  "Prefix blocks the router believes each node holds", ["node"],
                                  registry=self.registry)

        self.audit_errors = Counter("edgefleet_router_audit_write_errors",
                                    "Audit lines lost (disk full, file gone, queue full); requests still served",
                                    registry=self.registry)
        self.shutdown_cut = Counter("edgefleet_router_streams_cut_at_shutdown",
                                    "Streams ended in band because the shutdown drain timed out",
                                    registry=self.registry)

        # For the soak (scripts/soak.py): leaks show here first.
        self.tasks = Gauge("edgefleet_router_asyncio_tasks", "asyncio tasks alive in the router's event loop",
                           registry=self.registry)
        self.open_exchanges = Gauge("edgefleet_router_open_exchanges",
                                    "Proxied requests admitted and not yet finished", registry=self.registry)

        self._outcomes: dict[tuple[str, int], Any] = {}

    def observe(self, node: str, status: int, seconds: float) -> None:
        """Count one finished request (labelled children cached: this runs per request)."""
        child = self._outcomes.get((node, status))
        if child is None:
            child = self._outcomes[(node, status)] = self.requests.labels(node, str(status))
        child.inc()
        self.latency.observe(seconds)

    def render(self, nodes: list, now: float) -> bytes:
        for n in nodes:
            self.node_up.labels(n.name).set(1 if n.is_ready(now) else 0)
            self.node_inflight.labels(n.name).set(n.inflight)
            if n.rtt_ms is not None:
                self.node_rtt.labels(n.name).set(n.rtt_ms)
            if self.index is not None:
                self.index_blocks.labels(n.name).set(self.index.blocks(n.url))
        return generate_latest(self.registry)
