"""The agent-chain workload: C concurrent chains of K dependent calls.

Step k+1's prompt is step k's context, plus step k's output, plus a tool result of T tokens,
sent after a simulated tool delay. What an agent framework does to a server: contexts grow,
and TTFT with them, while other chains keep the batch busy.

The tool result goes in as a user message, not a ``tool`` message: servers validate
``tool_call_id`` pairings differently, and the point here is context growth, not tool parsing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.client import SampleRequest
from benchmarks.metrics import RequestRecord


@dataclass(slots=True, frozen=True)
class ChainSpec:
    num_chains: int = 8
    steps: int = 4
    tool_result_len: int = 64  # T tokens
    tool_delay_ms: float = 100.0


def tool_results(tokenizer: Any, spec: ChainSpec, seed: int) -> list[list[str]]:
    """Pre-drawn tool outputs, [chain][step], so every endpoint sees the same chains."""
    from benchmarks.datasets import random_text

    if tokenizer is None:
        raise ValueError("the agent-chain workload needs the model's tokenizer for tool results: pass --tokenizer DIR "
                         "(the endpoint has no POST /tokenize to fall back to)")
    rng = np.random.default_rng(seed + 7919)
    return [[random_text(tokenizer, spec.tool_result_len, rng)[0] for _ in range(spec.steps - 1)]
            for _ in range(spec.num_chains)]


def next_prompt(prev: SampleRequest, output: str, tool: str, chat: bool) -> str | list[dict[str, Any]]:
    if chat:
        msgs = prev.prompt if isinstance(prev.prompt, list) else [{"role": "user", "content": prev.prompt}]
        return [*msgs, {"role": "assistant", "content": output}, {"role": "user", "content": tool}]
    text = prev.prompt if isinstance(prev.prompt, str) else "".join(m["content"] for m in prev.prompt)
    return text + output + tool


async def run_chain(
    first: SampleRequest,
    tools: Sequence[str],
    spec: ChainSpec,
    chat: bool,
    send: Callable[[SampleRequest], Awaitable[RequestRecord]],
    chain_id: int,
    on_step: Callable[[], None] | None = None,
) -> list[RequestRecord]:
    """Run one chain; a failed step ends it (an agent cannot continue without the output)."""
    records: list[RequestRecord] = []
    req = first
    for step in range(spec.steps):
        rec = await send(req)
        rec.tag = {"chain": chain_id, "step": step}
        records.append(rec)
        if on_step is not None:
            on_step()
        if not rec.success or step == spec.steps - 1:
            break
        await asyncio.sleep(spec.tool_delay_ms / 1000.0)
        req = SampleRequest(next_prompt(req, rec.generated_text, tools[step], chat), 0, first.output_len)
    return records


def chain_summary(chains: Sequence[Sequence[RequestRecord]], spec: ChainSpec) -> dict[str, Any]:
    """Chain completion time, per-step TTFT, and TTFT growth with context."""
    done = [c for c in chains if len(c) == spec.steps and all(r.success for r in c)]
    times = [c[-1].start_time + c[-1].latency - c[0].start_time for c in done]
    arr = np.asarray(times or [0.0]) * 1000.0
    per_step = []
    for s in range(spec.steps):
        recs = [c[s] for c in chains if len(c) > s and c[s].success]
        ttft = np.asarray([r.ttft for r in recs] or [0.0]) * 1000.0
        per_step.append({
            "step": s,
            "completed": len(recs),
            "mean_prompt_tokens": float(np.mean([r.prompt_tokens for r in recs])) if recs else 0.0,
            "mean_ttft_ms": float(np.mean(ttft)),
            "p50_ttft_ms": float(np.percentile(ttft, 50)),
            "p99_ttft_ms": float(np.percentile(ttft, 99)),
            "mean_tpot_ms": float(np.mean([t for r in recs if (t := r.tpot) is not None] or [0.0]) * 1000.0),
        })
    ok = [r for c in chains for r in c if r.success]
    slope = None
    if len({r.prompt_tokens for r in ok}) > 1:
        # Least squares TTFT = a + b * context; b in ms per 1k context tokens.
        x = np.asarray([r.prompt_tokens for r in ok], dtype=float)
        y = np.asarray([r.ttft for r in ok]) * 1000.0
        slope = float(np.polyfit(x, y, 1)[0] * 1000.0)
    return {
        "num_chains": spec.num_chains,
        "steps": spec.steps,
        "tool_result_len": spec.tool_result_len,
        "tool_delay_ms": spec.tool_delay_ms,
        "completed_chains": len(done),
        "failed_chains": len(chains) - len(done),
        "mean_chain_ms": float(np.mean(arr)),
        "p50_chain_ms": float(np.percentile(arr, 50)),
        "p99_chain_ms": float(np.percentile(arr, 99)),
        "ttft_ms_per_1k_context_tokens": slope,
        "per_step": per_step,
    }
