"""Per-node circuit breaker (RELIABILITY.md E5).

closed --N consecutive failures--> open --open_s elapsed--> half_open
half_open --M consecutive successes--> closed;  half_open --any failure--> open

Only closed nodes receive client traffic. The capacity poll keeps running in every state,
so in half_open the polls are the probes: a flapping node must answer M polls in a row
before it gets requests again. A hard failure seen by the proxy (connection refused, a
stream cut mid-way) trips the breaker at once: the evidence is unambiguous and the next
request must not be sent there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class CircuitBreaker:
    failure_threshold: int = 3
    success_threshold: int = 2
    open_s: float = 2.0
    state: BreakerState = "closed"
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive, counted in half_open
    opened_at: float = 0.0
    trips: int = 0

    def poll_state(self, now: float) -> BreakerState:
        """The state at time ``now`` (open becomes half_open once ``open_s`` has passed)."""
        if self.state == "open" and now - self.opened_at >= self.open_s:
            self.state = "half_open"
            self.successes = 0
        return self.state

    def allows_requests(self, now: float) -> bool:
        return self.poll_state(now) == "closed"

    def record_success(self, now: float) -> None:
        state = self.poll_state(now)
        self.failures = 0
        if state == "half_open":
            self.successes += 1
            if self.successes >= self.success_threshold:
                self.state = "closed"
                self.successes = 0
        # A success while open (a late reply) proves little: wait for the half-open probes.

    def record_failure(self, now: float) -> None:
        state = self.poll_state(now)
        self.successes = 0
        if state == "half_open":
            self._open(now)
            return
        self.failures += 1
        if state == "closed" and self.failures >= self.failure_threshold:
            self._open(now)

    def trip(self, now: float) -> None:
        self.successes = 0
        self.failures = max(self.failures, self.failure_threshold)
        self._open(now)

    def _open(self, now: float) -> None:
        if self.state != "open":
            self.trips += 1
        self.state = "open"
        self.opened_at = now
