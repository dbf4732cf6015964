"""Recent performance over a sliding window, and the TTFT prediction built on it.

Timings come from the API layer (arrival, first token, finish), so every engine is measured
the same way and the numbers match what a client sees (minus the network).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

# Used before the node has served anything: deliberately pessimistic, and labelled as a prior.
PRIOR_PREFILL_TPS = 1000.0
PRIOR_TPOT_S = 0.05


@dataclass(slots=True)
class RequestTiming:
    finished_at: float
    ttft_s: float
    e2e_s: float
    prompt_tokens: int
    completion_tokens: int
    queued: bool = False  # admitted behind a full batch: its TTFT includes a wait for a slot

    @property
    def tpot_s(self) -> float | None:
        if self.completion_tokens <= 1:
            return None
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1)


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class PerfWindow:
    def __init__(self, window_s: float = 60.0, max_items: int = 4096):
        self.window_s = window_s
        self._items: deque[RequestTiming] = deque(maxlen=max_items)
        self._direct_tps: float | None = None  # the last prefill rate seen from requests that did not queue

    def record(self, timing: RequestTiming) -> None:
        self._items.append(timing)

    def recent(self, now: float | None = None) -> list[RequestTiming]:
        now = time.monotonic() if now is None else now
        while self._items and now - self._items[0].finished_at > self.window_s:
            self._items.popleft()
        return list(self._items)

    def summary(self, now: float | None = None) -> dict[str, float | int | None]:
        items = self.recent(now)
        ttfts = [t.ttft_s * 1000 for t in items]
        tpots = [x * 1000 for t in items if (x := t.tpot_s) is not None]
        # A queued request's TTFT is mostly its wait for a slot, not prefill: the prefill rate
        # comes from the requests that found a free slot. A node busy for longer than the
        # window has none; it keeps the last such rate (being busy does not slow prefill), and
        # only a node that never had one falls back to every request's.
        direct = [t for t in items if not t.queued]
        rate_of = direct or ([] if self._direct_tps is not None else items)
        prefill_time = sum(t.ttft_s for t in rate_of)
        prefill_tps = (sum(t.prompt_tokens for t in rate_of) / prefill_time) if prefill_time > 0 else None
        if direct and prefill_tps:
            self._direct_tps = prefill_tps
        elif not direct and self._direct_tps is not None:
            prefill_tps = self._direct_tps if items else None
        tpot_p50 = percentile(tpots, 50)
        return {
            "window_s": self.window_s,
            "requests": len(items),
            "ttft_p50_ms": percentile(ttfts, 50),
            "ttft_p95_ms": percentile(ttfts, 95),
            "tpot_p50_ms": tpot_p50,
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": (1000.0 / tpot_p50) if tpot_p50 else None,
            "mean_e2e_s": (sum(t.e2e_s for t in items) / len(items)) if items else None,
            # how long a request holds its sequence slot: E2E less any wait for the slot
            # (its decode, plus its prompt's prefill at the direct rate)
            "mean_busy_s": (sum(t.e2e_s - t.ttft_s + t.prompt_tokens / prefill_tps for t in items) / len(items))
            if items and prefill_tps else None,
        }


@dataclass(slots=True)
class Prediction:
    predicted_ttft_s: float
    queue_wait_s: float
    basis: str


def predict_ttft(*, prompt_tokens: int, waiting_prompt_tokens: int, in_flight: int, max_num_seqs: int,
                 summary: dict[str, float | int | None]) -> Prediction:
    """TTFT ~= wait for a sequence slot + prefill of everything queued ahead and this prompt.

    The slot wait assumes running requests free their slots after the recent mean time a
    request holds one (``mean_busy_s``: E2E less its own wait for a slot; counting that wait
    would count the queue twice), max_num_seqs at a time. Prefill runs at the recent
    effective prefill rate.
    """
    prefill_tps = summary.get("prefill_tokens_per_s") or PRIOR_PREFILL_TPS
    basis = "recent window" if summary.get("prefill_tokens_per_s") else "prior (no recent requests)"
    ahead = max(0, in_flight - max_num_seqs + 1)
    hold = float(summary.get("mean_busy_s") or summary.get("mean_e2e_s") or 0.0)
    queue_wait = (ahead / max(1, max_num_seqs)) * hold
    prefill = (waiting_prompt_tokens + prompt_tokens) / prefill_tps
    # A running batch interleaves decode steps with our prefill: add one step.
    step = (float(summary.get("tpot_p50_ms") or 0.0) / 1000.0) if in_flight else 0.0
    return Prediction(queue_wait + prefill + step, queue_wait, basis)
