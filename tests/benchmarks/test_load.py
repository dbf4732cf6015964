"""Arrival process and dispatcher: statistical checks with fixed seeds."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

from benchmarks.load import RampUp, arrival_offsets, inter_arrivals, run_load
from benchmarks.metrics import RequestRecord

N = 20_000


def ks_exponential(gaps: np.ndarray, rate: float) -> float:
    """Kolmogorov-Smirnov distance between the sample and Exp(rate)."""
    x = np.sort(gaps)
    cdf = 1.0 - np.exp(-rate * x)
    n = len(x)
    return float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))


def test_poisson_rate_and_shape():
    gaps = inter_arrivals(N, 8.0, 1.0, np.random.default_rng(0))
    # mean 1/R within 4 standard errors (sd of Exp = mean)
    assert abs(gaps.mean() - 0.125) < 4 * 0.125 / math.sqrt(N)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # CV of an exponential is 1
    assert ks_exponential(gaps, 8.0) < 1.63 / math.sqrt(N)  # KS critical value at 1 %


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 2.0, 4.0])
def test_gamma_burstiness(burstiness):
    rate = 5.0
    gaps = inter_arrivals(N, rate, burstiness, np.random.default_rng(1))
    mean, cv = gaps.mean(), gaps.std() / gaps.mean()
    # Gamma(k, 1/(R k)): mean 1/R, CV 1/sqrt(k)
    assert abs(mean - 1 / rate) < 4 * (1 / rate) / math.sqrt(burstiness * N)
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_infinite_burstiness_is_regular_and_infinite_rate_is_immediate():
    assert np.allclose(inter_arrivals(10, 4.0, math.inf, np.random.default_rng(0)), 0.25)
    assert np.all(inter_arrivals(10, math.inf, 1.0, np.random.default_rng(0)) == 0)


def test_offsets_rescaled_to_target_and_seeded():
    a = arrival_offsets(100, 10.0, 1.0, np.random.default_rng(3))
    b = arrival_offsets(100, 10.0, 1.0, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert a[-1] == pytest.approx(10.0)  # n / rate, as vLLM rescales
    assert np.all(np.diff(a) >= 0)


def test_ramp_up_rates():
    ramp = RampUp("linear", 1.0, 9.0)
    assert ramp.rate(0, 5) == 1.0 and ramp.rate(4, 5) == 9.0 and ramp.rate(2, 5) == 5.0
    exp = RampUp("exponential", 1.0, 16.0)
    assert exp.rate(2, 5) == pytest.approx(4.0)
    gaps = inter_arrivals(N, math.inf, 1.0, np.random.default_rng(2), ramp)
    head, tail = gaps[: N // 20], gaps[-N // 20:]
    assert head.mean() == pytest.approx(1 / 1.2, rel=0.1)  # rates 1..1.4 in the first 5 %
    assert tail.mean() == pytest.approx(1 / 8.8, rel=0.1)


def test_invalid_parameters():
    with pytest.raises(ValueError):
        inter_arrivals(3, 1.0, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        inter_arrivals(3, -1.0, 1.0, np.random.default_rng(0))


async def test_concurrency_gate_and_queue_time():
    in_flight = peak = 0

    async def call(i: int) -> RequestRecord:
        nonlocal in_flight, peak
        r = RequestRecord(success=True, start_time=time.perf_counter())
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return r

    recs, dur = await run_load(8, call, max_concurrency=2)
    assert peak == 2
    assert dur == pytest.approx(0.2, abs=0.08)  # 4 waves of 50 ms
    waits = sorted(r.queue_time for r in recs)
    assert waits[:2] == pytest.approx([0, 0], abs=0.01) and waits[-1] == pytest.approx(0.15, abs=0.05)


async def test_open_loop_respects_schedule():
    starts: list[float] = []

    async def call(i: int) -> RequestRecord:
        starts.append(time.perf_counter())
        return RequestRecord(success=True, start_time=starts[-1])

    offsets = np.array([0.0, 0.1, 0.1, 0.3])
    t0 = time.perf_counter()
    _, dur = await run_load(4, call, offsets=offsets)
    rel = np.array([s - t0 for s in starts])
    assert np.all(rel >= offsets - 0.002)  # never early
    assert np.all(rel <= offsets + 0.05)  # and not late beyond event-loop jitter
    assert 0.3 <= dur < 0.36
