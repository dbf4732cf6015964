"""Metric arithmetic, exactly as BENCHMARKS.md (and vLLM's `vllm bench serve`) defines it.

Pure functions over :class:`RequestRecord` lists: no I/O, no clocks, so the tests can feed
hand-made timings and check every number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

PERCENTILES: tuple[float, ...] = (50, 90, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")
GOODPUT_KEYS = ("ttft", "tpot", "e2el")


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it. Times are seconds (perf_counter clock)."""

    success: bool = False
    start_time: float = 0.0  # right before the request was sent, after the concurrency gate
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)  # one gap per choice-bearing event after the first
    latency: float = 0.0  # E2EL: last choice-bearing event minus start
    prompt_tokens: int = 0
    output_tokens: int = 0
    queue_time: float = 0.0  # time spent waiting at the client's own concurrency gate
    error: str = ""
    generated_text: str = ""
    node: str | None = None  # X-Edgefleet-Node of the response, when a router answered
    usage_reported: bool = False  # False: output_tokens was counted by the client, not the server
    tag: dict = field(default_factory=dict)  # workload detail (agent chain/step, round, ...)

    @property
    def tpot(self) -> float | None:
        """(E2EL - TTFT) / (N - 1); undefined (None) for N <= 1."""
        if self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def stats_ms(values_s: Sequence[float], percentiles: Iterable[float] = PERCENTILES) -> dict[str, float]:
    """mean, median, population std and linear-interpolated percentiles, in milliseconds.

    An empty list gives zeros, as vLLM does (``np.mean(values or 0)``), so files stay comparable.
    """
    arr = np.asarray(values_s if len(values_s) else [0.0], dtype=np.float64) * 1000.0
    out = {"mean": float(np.mean(arr)), "median": float(np.median(arr)), "std": float(np.std(arr))}
    for p in percentiles:
        out[f"p{_pword(p)}"] = float(np.percentile(arr, p))
    return out


def _pword(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def parse_goodput(pairs: Iterable[str]) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` -> ``{"ttft": 500.0, "tpot": 50.0}`` (milliseconds)."""
    slos: dict[str, float] = {}
    for pair in pairs:
        for item in pair.split():  # also accept one quoted "ttft:500 tpot:50"
            name, sep, value = item.partition(":")
            if not sep or name not in GOODPUT_KEYS:
                raise ValueError(f"goodput SLO {item!r}: expected KEY:MS with KEY in {', '.join(GOODPUT_KEYS)}")
            try:
                ms = float(value)
            except ValueError:
                raise ValueError(f"goodput SLO {item!r}: {value!r} is not a number of milliseconds") from None
            if ms < 0:
                raise ValueError(f"goodput SLO {item!r}: must be non-negative")
            slos[name] = ms
    return slos


def is_good(rec: RequestRecord, slos: dict[str, float]) -> bool:
    """Meets every SLO given. TPOT counts as 0 when N <= 1 (vLLM does the same)."""
    values = {"ttft": rec.ttft, "tpot": rec.tpot or 0.0, "e2el": rec.latency}
    return all(values[k] <= ms / 1000.0 for k, ms in slos.items())  # vLLM compares in seconds


def summarize(
    records: Sequence[RequestRecord],
    duration: float,
    goodput: dict[str, float] | None = None,
    percentiles: Iterable[float] = PERCENTILES,
) -> dict[str, float | int | None]:
    """Run-level metrics with vLLM's key names. Failed requests are counted, then excluded."""
    ok = [r for r in records if r.success]
    percentiles = tuple(percentiles)
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    dur = duration if duration > 0 else float("nan")
    out: dict[str, float | int | None] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / dur,
        "request_goodput": (sum(is_good(r, goodput) for r in ok) / dur) if goodput else None,
        "output_throughput": total_out / dur,
        "total_token_throughput": (total_in + total_out) / dur,
    }
    series = {
        "ttft": [r.ttft for r in ok],
        "tpot": [t for r in ok if (t := r.tpot) is not None],
        "itl": [gap for r in ok for gap in r.itl],  # pooled over all requests, per chunk
        "e2el": [r.latency for r in ok],
    }
    for name in METRICS:
        s = stats_ms(series[name], percentiles)
        for stat in ("mean", "median", "std"):
            out[f"{stat}_{name}_ms"] = s[stat]
        for p in percentiles:
            out[f"p{_pword(p)}_{name}_ms"] = s[f"p{_pword(p)}"]
    queue = stats_ms([r.queue_time for r in ok], percentiles)
    out["mean_client_queue_time_ms"] = queue["mean"]
    out["p99_client_queue_time_ms"] = queue["p99"] if "p99" in queue else None
    return out


def detail(records: Sequence[RequestRecord]) -> dict[str, list]:
    """Per-request lists under vLLM's `--save-detailed` key names (plus `nodes`, `tags`)."""
    return {
        "input_lens": [r.prompt_tokens for r in records],
        "output_lens": [r.output_tokens if r.success else 0 for r in records],
        "ttfts": [r.ttft for r in records],
        "itls": [r.itl for r in records],
        "latencies": [r.latency for r in records],
        "start_times": [r.start_time for r in records],
        "queue_times": [r.queue_time for r in records],
        "generated_texts": [r.generated_text for r in records],
        "errors": [r.error for r in records],
        "nodes_per_request": [r.node for r in records],
        "tags": [r.tag for r in records],
    }



def by_node(records: Sequence[RequestRecord], duration: float,
            percentiles: Iterable[float] = PERCENTILES) -> dict[str, dict[str, float | int | None]]:
    """Per-node share and latency, from the router's ``X-Edgefleet-Node`` header.

    Empty when no response carried the header (not behind an edgefleet router). Requests
    that failed before any node answered are grouped under ``"(none)"``.
    """
    if not any(r.node for r in records):
        return {}
    groups: dict[str, list[RequestRecord]] = {}
    for r in records:
        groups.setdefault(r.node or "(none)", []).append(r)
    out = {}
    for node, recs in sorted(groups.items()):
        s = summarize(recs, duration, None, percentiles)
        out[node] = {"requests": len(recs), "share": len(recs) / len(records),
                     **{k: s.get(k) for k in ("completed", "failed", "total_output_tokens", "request_throughput",
                                          "output_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
                                          "mean_tpot_ms", "p99_tpot_ms", "mean_e2el_ms", "p99_e2el_ms")}}
    return out
