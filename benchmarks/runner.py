"""Run a workload against one or several endpoints, interleaved, and return result dicts.

The public entry point for other scripts::

    from benchmarks.client import Endpoint
    from benchmarks.runner import Workload, run_benchmark
    results = run_benchmark([Endpoint(url_a, model), Endpoint(url_b, model)], workload, rounds=3)

Each round runs the whole workload on every endpoint in turn (A B, A B, ...), so slow
drifts of a shared machine hit both alike; ratios are taken round by round ("pair by
pair") and their median reported.
"""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import httpx
import numpy as np

from benchmarks.agent import ChainSpec, chain_summary, run_chain
from benchmarks.client import Endpoint, SampleRequest, check_endpoint, make_client, probe, send
from benchmarks.context import target_context
from benchmarks.load import RampUp, arrival_offsets, run_load
from benchmarks.metrics import PERCENTILES, RequestRecord, by_node, detail, summarize

RATIO_KEYS = ("request_throughput", "output_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
              "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "mean_e2el_ms", "p99_e2el_ms")


@dataclass(slots=True)
class Workload:
    """What to send and how. ``requests`` are the prompts (for agent chains: the first step)."""

    requests: list[SampleRequest]
    name: str = "serve"  # "serve" | "agent-chain"
    dataset_name: str = "random"
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    ramp_up: RampUp | None = None
    ignore_eos: bool = False
    extra_body: dict[str, Any] | None = None
    seed: int = 0
    num_warmups: int = 0
    goodput: dict[str, float] | None = None
    percentiles: tuple[float, ...] = PERCENTILES
    chain: ChainSpec | None = None
    tool_results: list[list[str]] | None = None  # [chain][step], drawn once for all endpoints
    tokenizer_id: str | None = None
    save_detailed: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def units(self) -> int:
        """Progress units per endpoint per round: requests, or chain steps."""
        return self.chain.num_chains * self.chain.steps if self.chain else len(self.requests)


@dataclass(slots=True)
class _Run:
    records: list[RequestRecord]
    duration: float
    chains: list[list[RequestRecord]] | None = None


async def _run_once(client: httpx.AsyncClient, ep: Endpoint, wl: Workload, tokenizer: Any,
                    advance: Callable[[int], None]) -> _Run:
    async def one(req: SampleRequest) -> RequestRecord:
        return await send(client, ep, req, ignore_eos=wl.ignore_eos, extra_body=wl.extra_body, tokenizer=tokenizer)

    if wl.chain is not None:
        spec, tools = wl.chain, wl.tool_results or []
        n = spec.num_chains
        offsets = _offsets(wl, n)
        chains, dur = await run_load(
            n, lambda i: run_chain(wl.requests[i], tools[i], spec, ep.chat, one, i, lambda: advance(1)),
            offsets=offsets, max_concurrency=wl.max_concurrency)
        return _Run([r for c in chains for r in c], dur, chains)
    n = len(wl.requests)
    records, dur = await run_load(n, lambda i: one(wl.requests[i]), offsets=_offsets(wl, n),
                                  max_concurrency=wl.max_concurrency, on_done=lambda _: advance(1))
    return _Run(records, dur)


def _offsets(wl: Workload, n: int) -> np.ndarray | None:
    if math.isinf(wl.request_rate) and wl.ramp_up is None:
        return None
    # Same seed, same schedule for every endpoint and round.
    return arrival_offsets(n, wl.request_rate, wl.burstiness, np.random.default_rng(wl.seed), wl.ramp_up)


async def _warmup(client: httpx.AsyncClient, ep: Endpoint, wl: Workload, tokenizer: Any) -> None:
    if wl.num_warmups <= 0 or not wl.requests:
        return
    first = wl.requests[0]
    await run_load(wl.num_warmups, lambda i: send(client, ep, first, ignore_eos=wl.ignore_eos,
                                                  extra_body=wl.extra_body, tokenizer=tokenizer),
                   max_concurrency=wl.max_concurrency)


async def run_benchmark_async(
    endpoints: Sequence[Endpoint],
    workload: Workload,
    *,
    rounds: int = 1,
    tokenizer: Any = None,
    progress: bool = True,
    check: bool = True,
    contexts: list[dict[str, Any]] | None = None,
    client: httpx.AsyncClient | None = None,
) -> list[dict[str, Any]]:
    """See :func:`run_benchmark`."""
    if not endpoints:
        raise ValueError("no endpoint to benchmark")
    if workload.chain is not None and len(workload.requests) < workload.chain.num_chains:
        raise ValueError("agent-chain workload needs one first prompt per chain")
    own = client is None
    # Room for every endpoint's connections: with one shared limit, the endpoint run second
    # waits for the first one's idle keep-alive connections to be evicted (seen as +0.5 s TTFT).
    client = client or make_client(workload.max_concurrency * len(endpoints) if workload.max_concurrency else None)
    try:
        if check:
            for ep in endpoints:
                await check_endpoint(client, ep)
                await probe(client, ep, tokenizer)
        if contexts is None:
            contexts = [await target_context(client, ep) for ep in endpoints]
        for ep in endpoints:
            await _warmup(client, ep, workload, tokenizer)
        runs: list[list[_Run]] = [[] for _ in endpoints]
        # A full collection over a heap holding a tokenizer takes tens of ms and would stall
        # every stream in flight; freeze what exists now (as vLLM's bench does).
        gc.collect()
        gc.freeze()
        try:
            with _progress(progress, len(endpoints) * rounds * workload.units) as advance:
                for r in range(rounds):
                    # A B, B A, A B, ...: whatever going first or second costs is shared evenly.
                    order = list(enumerate(endpoints))
                    for i, ep in order if r % 2 == 0 else order[::-1]:
                        runs[i].append(await _run_once(client, ep, workload, tokenizer, advance))
        finally:
            gc.unfreeze()
    finally:
        if own:
            await client.aclose()
    results = [_result(ep, workload, rs, ctx) for ep, rs, ctx in zip(endpoints, runs, contexts)]
    _add_ratios(results, runs, workload)
    return results


def run_benchmark(
    endpoints: Sequence[Endpoint],
    workload: Workload,
    *,
    rounds: int = 1,
    tokenizer: Any = None,
    progress: bool = True,
    check: bool = True,
) -> list[dict[str, Any]]:
    """Run ``workload`` on every endpoint, interleaved over ``rounds``; one result dict each.

    Dicts carry vLLM's key names (see BENCHMARKS.md) plus ``context`` (capacity document or
    machine facts), ``rounds`` (per-round figures), ``nodes`` (per router node), ``agent``
    (chain workloads) and, for endpoints after the first, ``ratios_to_first``.
    Raises :class:`benchmarks.client.EndpointError` when an endpoint is unusable.
    """
    return asyncio.run(run_benchmark_async(endpoints, workload, rounds=rounds, tokenizer=tokenizer,
                                           progress=progress, check=check))


async def run_sweep_async(
    endpoints: Sequence[Endpoint],
    workload: Workload,
    *,
    max_level: int = 64,
    min_gain: float = 0.05,
    rounds: int = 1,
    tokenizer: Any = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Synchronous (concurrency 1), then 2, 4, 8, ... until output throughput stops rising
    by ``min_gain`` on every endpoint, or ``max_level`` is reached."""
    results: list[dict[str, Any]] = []
    best = [0.0] * len(endpoints)
    contexts = None
    level = 1
    async with make_client(None) as client:
        while level <= max_level:
            wl = replace(workload, max_concurrency=level, request_rate=math.inf, ramp_up=None)
            if contexts is None:
                for ep in endpoints:
                    await check_endpoint(client, ep)
                    await probe(client, ep, tokenizer)
                contexts = [await target_context(client, ep) for ep in endpoints]
            point = await run_benchmark_async(endpoints, wl, rounds=rounds, tokenizer=tokenizer, progress=progress,
                                              check=False, contexts=contexts, client=client)
            rising = False
            for i, r in enumerate(point):
                r["sweep_step"] = level.bit_length() - 1
                if r["output_throughput"] > best[i] * (1 + min_gain):
                    rising = True
                best[i] = max(best[i], r["output_throughput"])
            results.extend(point)
            if not rising:
                break
            level *= 2
    return results


def run_sweep(endpoints: Sequence[Endpoint], workload: Workload, **kw: Any) -> list[dict[str, Any]]:
    return asyncio.run(run_sweep_async(endpoints, workload, **kw))


def _result(ep: Endpoint, wl: Workload, runs: list[_Run], context: dict[str, Any]) -> dict[str, Any]:
    records = [r for run in runs for r in run.records]
    duration = sum(run.duration for run in runs)
    out: dict[str, Any] = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": ep.backend,
        "backend": ep.backend,
        "label": ep.label,
        "model_id": ep.model_id or ep.model,
        "tokenizer_id": wl.tokenizer_id,
        "num_prompts": len(wl.requests) if wl.chain is None else wl.chain.num_chains,
        "request_rate": wl.request_rate if math.isfinite(wl.request_rate) else "inf",
        "burstiness": wl.burstiness,
        "max_concurrency": wl.max_concurrency,
    }
    if wl.ramp_up is not None:
        out |= {"ramp_up_strategy": wl.ramp_up.strategy, "ramp_up_start_rps": wl.ramp_up.start_rps,
                "ramp_up_end_rps": wl.ramp_up.end_rps}
    out |= summarize(records, duration, wl.goodput, wl.percentiles)
    out |= {
        "workload": wl.name,
        "dataset_name": wl.dataset_name,
        "seed": wl.seed,
        "ignore_eos": wl.ignore_eos,
        "goodput_slos_ms": wl.goodput or None,
        "endpoint": ep.public(),
        "num_rounds": len(runs),
        "rounds": [_round_brief(run, wl) for run in runs],
        "client_counted_output_tokens": sum(1 for r in records if r.success and not r.usage_reported),
        "errors_sample": sorted({r.error for r in records if r.error})[:5],
        "context": context,
    }
    nodes = by_node(records, duration, wl.percentiles)
    if nodes:
        out["nodes"] = nodes
    if wl.chain is not None:
        out["agent"] = chain_summary([c for run in runs for c in (run.chains or [])], wl.chain)
    out |= wl.metadata
    if wl.save_detailed:
        out |= detail(records)
    return out


def _round_brief(run: _Run, wl: Workload) -> dict[str, Any]:
    s = summarize(run.records, run.duration, wl.goodput, wl.percentiles)
    return {k: s.get(k) for k in ("duration", "completed", "failed", *RATIO_KEYS)}


def _add_ratios(results: list[dict[str, Any]], runs: list[list[_Run]], wl: Workload) -> None:
    """Per-round ratio endpoint/first for each key, and their median."""
    if len(results) < 2:
        return
    base = results[0]["rounds"]
    for res in results[1:]:
        pairs = {k: [r[k] / b[k] if b[k] and r[k] is not None else None for r, b in zip(res["rounds"], base)] for k in RATIO_KEYS}
        res["ratios_to_first"] = {
            "baseline": results[0]["label"],
            "median": {k: (float(np.median([x for x in v if x is not None])) if any(x is not None for x in v)
                           else None) for k, v in pairs.items()},
            "per_round": pairs,
        }


class _progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar, self.task = enabled, total, None, None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=False)
        self.bar.start()
        self.task = self.bar.add_task("requests", total=self.total)
        return lambda n: self.bar.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
