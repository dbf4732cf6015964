"""Interactive-class TTFT under a background batch load, priorities on vs off, on a real
node (``edgefleet serve --engine sim`` by default).

    python -m benchmarks.priority --rounds 2 --interactive 40 --out results/priority

Per phase: ``--batch-clients`` closed-loop clients send long batch requests (``priority``
``--batch-priority`` when priorities are on) and keep the node's queue full, while one
interactive client sends short calls at Poisson arrivals (``priority`` 0 when on). With
priorities off nobody sends a priority and the node serves in arrival order. Phases run
interleaved (off, on, off, on, ...) on the same node with the same seed, and the report
is the ratio on/off of interactive p50/p99 TTFT pooled per mode, plus per round
(BENCHMARKS.md: TTFT = first choice-bearing SSE event). The goal (issue 11) is an
interactive p99 <= 0.5x with priorities on. Writes JSON + Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(opts: dict[str, Any], max_num_seqs: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "server.cli", "serve", "--engine", "sim", "--port", str(port), "--name", "prio",
            "--served-model-name", "sim-model", "--max-num-seqs", str(max_num_seqs)]
    for k, v in opts.items():
        args += ["--engine-option", f"{k}={json.dumps(v)}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=1, trust_env=False).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("node did not become ready")


async def ttft(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, priority: int | None) -> float:
    body: dict[str, Any] = {"model": "sim-model", "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": max_tokens, "stream": True}
    if priority is not None:
        body["priority"] = priority
    start = time.perf_counter()
    first = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {") and '"choices":[{' in line.replace(" ", ""):
                first = time.perf_counter() - start
    return (first if first is not None else time.perf_counter() - start) * 1000.0


async def phase(url: str, on: bool, args: argparse.Namespace, seed: int) -> list[float]:
    rng = random.Random(seed)
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=args.batch_clients + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits, trust_env=False) as client:
        async def batch(k: int) -> None:
            i = 0
            while not stop.is_set():
                prompt = f"batch {k}.{i} " + "summarise this document " * (args.batch_prompt_tokens // 6)
                await ttft(client, url, prompt, args.batch_max_tokens, args.batch_priority if on else None)
                i += 1

        workers = [asyncio.create_task(batch(k)) for k in range(args.batch_clients)]
        await asyncio.sleep(args.warmup_s)  # let the queue build up
        out = []
        for j in range(args.interactive):
            await asyncio.sleep(rng.expovariate(args.interactive_rate))
            out.append(await ttft(client, url, f"interactive {seed}.{j}: what next?", 8, 0 if on else None))
        stop.set()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return out


def stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {"n": len(xs), "mean": float(a.mean()), "median": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--interactive", type=int, default=40, help="interactive calls per phase")
    ap.add_argument("--interactive-rate", type=float, default=2.0, help="interactive calls per second (Poisson)")
    ap.add_argument("--batch-clients", type=int, default=16)
    ap.add_argument("--batch-prompt-tokens", type=int, default=1000)
    ap.add_argument("--batch-max-tokens", type=int, default=64)
    ap.add_argument("--batch-priority", type=int, default=10)
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/priority"))
    args = ap.parse_args()
    # Prefix caching off: every batch prompt costs its full prefill, as distinct documents would.
    opts = {"prefill_tokens_per_s": 4000.0, "decode_ms": 20.0, "enable_prefix_caching": False}
    proc, url = start_node(opts, args.max_num_seqs)
    per_round: list[dict[str, Any]] = []
    pooled: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for r in range(args.rounds):
            row: dict[str, Any] = {"round": r}
            for mode in ("off", "on"):
                xs = asyncio.run(phase(url, mode == "on", args, args.seed + r))
                pooled[mode] += xs
                row[mode] = stats(xs)
                print(f"round {r} priorities {mode}: interactive TTFT p50 {row[mode]['median']:.0f} ms, "
                      f"p99 {row[mode]['p99']:.0f} ms", flush=True)
            row["p99_ratio_on_off"] = row["on"]["p99"] / row["off"]["p99"]
            per_round.append(row)
    finally:
        proc.terminate()
        proc.wait(10)
    off, on = stats(pooled["off"]), stats(pooled["on"])
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "backend": "edgefleet-sim",
              "label": "priority", "engine_options": opts, "args": {k: str(v) for k, v in vars(args).items()},
              "interactive_ttft_ms": {"off": off, "on": on},
              "ratio_on_off": {"median": on["median"] / off["median"], "p99": on["p99"] / off["p99"]},
              "rounds": per_round, "simulated": True}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "priority.json").write_text(json.dumps(result, indent=2))
    md = ["| priorities | n | p50 TTFT ms | p90 | p99 |", "|---|---|---|---|---|"]
    for name, s in (("off", off), ("on", on)):
        md.append(f"| {name} | {s['n']} | {s['median']:.0f} | {s['p90']:.0f} | {s['p99']:.0f} |")
    md.append(f"| on/off | | {result['ratio_on_off']['median']:.2f}x | | {result['ratio_on_off']['p99']:.2f}x |")
    (args.out / "priority.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
