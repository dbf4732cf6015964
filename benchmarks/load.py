"""Load generation: open-loop arrivals (Gamma / Poisson, optional ramp-up) and a closed-loop
concurrency gate, in one dispatcher.

Arrival times are drawn up front, as vLLM does, so a slow event loop delays a send but
never changes the schedule.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from benchmarks.metrics import RequestRecord

T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class RampUp:
    """Request rate moving from ``start_rps`` to ``end_rps`` over the run (vLLM's ramp-up)."""

    strategy: Literal["linear", "exponential"]
    start_rps: float
    end_rps: float

    def rate(self, index: int, total: int) -> float:
        progress = index / max(total - 1, 1)
        if self.strategy == "linear":
            return self.start_rps + (self.end_rps - self.start_rps) * progress
        return self.start_rps * (self.end_rps / self.start_rps) ** progress


def inter_arrivals(n: int, request_rate: float, burstiness: float, rng: np.random.Generator,
                   ramp_up: RampUp | None = None) -> np.ndarray:
    """Gaps between consecutive sends: Gamma(shape=burstiness, scale=1/(rate*burstiness)).

    burstiness 1 is a Poisson process; below 1 burstier, above 1 more regular; inf is a
    constant gap. An infinite rate sends everything at once.
    """
    if burstiness <= 0:
        raise ValueError("burstiness must be positive")
    rates = np.array([ramp_up.rate(i, n) if ramp_up else request_rate for i in range(n)], dtype=np.float64)
    if np.any(rates <= 0):
        raise ValueError("request rate must be positive")
    gaps = np.zeros(n)
    finite = np.isfinite(rates)
    if math.isinf(burstiness):
        gaps[finite] = 1.0 / rates[finite]
    elif finite.any():
        gaps[finite] = rng.gamma(shape=burstiness, scale=1.0 / (rates[finite] * burstiness))
    return gaps


def arrival_offsets(n: int, request_rate: float, burstiness: float, rng: np.random.Generator,
                    ramp_up: RampUp | None = None) -> np.ndarray:
    """Send times relative to the first dispatch.

    Like vLLM, a fixed-rate schedule is rescaled so the last send lands at n / rate: the sum
    of n random gaps is off by a few percent, which would otherwise move throughput between
    seeds.
    """
    offsets = np.cumsum(inter_arrivals(n, request_rate, burstiness, rng, ramp_up))
    if ramp_up is None and n and offsets[-1] > 0 and math.isfinite(request_rate):
        offsets *= (n / request_rate) / offsets[-1]
    return offsets


async def run_load(
    n: int,
    call: Callable[[int], Awaitable[T]],
    *,
    offsets: np.ndarray | None = None,
    max_concurrency: int | None = None,
    on_done: Callable[[T], None] | None = None,
) -> tuple[list[T], float]:
    """Dispatch ``call(i)`` for i in range(n) at ``offsets`` under a concurrency gate.

    Returns the results in request order and the duration, first dispatch to last
    completion. Time spent at the gate becomes the record's ``queue_time``.
    """
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(i: int) -> T:
        arrived = time.perf_counter()
        if gate is None:
            result = await call(i)
        else:
            async with gate:
                result = await call(i)
        first = result[0] if isinstance(result, list) and result else result
        if isinstance(first, RequestRecord):
            first.queue_time = max(first.start_time - arrived, 0.0)
        if on_done is not None:
            on_done(result)
        return result

    start = time.perf_counter()
    tasks = []
    for i in range(n):
        if offsets is not None:
            delay = start + float(offsets[i]) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - start
