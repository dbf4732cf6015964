"""Warm and busy versus cold and idle: does the router pick the better node for a model?

    python -m benchmarks.warm_cold_sweep --queues 0 1 2 3 4 6 8 12 --rounds 5

Two real sim nodes (``edgefleet serve --engine sim``), each a model host of two models
(``target``, and a pinned ``other`` so the node is a host), behind a real router
(``edgefleet route``):

- **warm**: ``target`` loaded and busy. A closed loop of ``slots + Q`` clients sends it
  ``target`` requests directly (not through the router), so ``slots`` run and about ``Q`` wait;
- **cold**: ``target`` unloaded (loaded and unloaded once first, so the node reports a
  measured ``load_s``; the sim engine's load takes ``--load-s``), otherwise idle.

For each queue length Q, rounds interleave three probes, each a streaming 1-token request
for ``target`` (TTFT at the first choice-bearing event, BENCHMARKS.md):

- **router**: through the router (its choice is in ``X-Edgefleet-Node``);
- **warm**: sent to the warm node directly;
- **cold**: sent to the cold node directly (it waits for the load).

Before every probe the cold node's ``target`` is unloaded again (admin route) and the router
has polled that state. Reported per Q: mean TTFT of each, where the router sent its probes,
``choice / best`` (the expected TTFT of the router's choices, each at the chosen node's forced
mean, over the better node's: the decision alone) and ``router / best`` (the router's own
probes, with its proxying and their sampling noise); the goal (issue #14) is a choice within
1.1x of the better node at every Q. Latencies are the
sim engine's model, the processes, HTTP and the router are real. Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.client import Endpoint, SampleRequest, make_client, send
from benchmarks.router_overhead import EDGEFLEET, Proc, free_port, save, spawn

MODEL = "target"


def node_config(path: Path, load_s: float, decode_ms: float) -> Path:
    opts = f"{{load_s = {load_s}, decode_ms = {decode_ms}}}"
    path.write_text(f"""keep_alive = "-1"
[[models]]
name = "{MODEL}"
engine = "sim"
engine_options = {opts}

[[models]]
name = "other"
engine = "sim"
pinned = true
""")
    return path


def start_node(name: str, cfg: Path, logdir: Path, slots: int) -> Proc:
    port = free_port()
    args = [EDGEFLEET, "serve", "--engine", "sim", "--config", str(cfg), "--port", str(port), "--name", name,
            "--max-num-seqs", str(slots), "--max-queued-requests", "1000", "--state-dir", str(logdir / name)]
    return spawn(args, name, logdir, "/ready", url=f"http://127.0.0.1:{port}")


def start_router(nodes: list[str], logdir: Path, poll_s: float) -> Proc:
    port = free_port()
    args = [EDGEFLEET, "route", "--port", str(port), "--log-level", "warning", "--poll-interval", str(poll_s)]
    for n in nodes:
        args += ["--node", n]
    return spawn(args, "router", logdir, "/ready", url=f"http://127.0.0.1:{port}")


async def state_at_router(client: httpx.AsyncClient, router: str, node: str) -> str | None:
    r = await client.get(router + "/v1/models")
    for m in r.json().get("data", []):
        if m["id"] == MODEL:
            return m.get("states", {}).get(node)
    return None


async def make_cold(client: httpx.AsyncClient, cold: str, router: str) -> None:
    """Unload ``target`` on the cold node and wait until the router has seen it."""
    r = await client.post(cold + f"/v1/models/{MODEL}/unload")
    r.raise_for_status()
    deadline = time.monotonic() + 10
    while await state_at_router(client, router, "cold") != "unloaded":
        if time.monotonic() > deadline:
            raise RuntimeError("the router never saw the cold node's model unloaded")
        await asyncio.sleep(0.05)


async def background(client: httpx.AsyncClient, url: str, stop: asyncio.Event, max_tokens: int,
                     rng: random.Random) -> None:
    """One closed-loop client; request lengths vary (0.5x-1.5x) so the slots free at
    scattered times, not in lock-step."""
    while not stop.is_set():
        body = {"model": MODEL, "prompt": "busy " * 16, "max_tokens": rng.randint(max(1, max_tokens // 2),
                max_tokens * 3 // 2), "ignore_eos": True}
        r = await client.post(url + "/v1/completions", json=body)
        if r.status_code != 200:
            await asyncio.sleep(0.1)


async def probe(client: httpx.AsyncClient, url: str, rng: random.Random, jitter_s: float) -> tuple[float, str | None]:
    """``jitter_s``: a random pause first, so probes land at random phases of the busy node's work."""
    await asyncio.sleep(rng.uniform(0.0, jitter_s))
    ep = Endpoint(base_url=url, model=MODEL)
    rec = await send(client, ep, SampleRequest(prompt="probe " * 8, prompt_len=8, output_len=1))
    if not rec.success:
        raise RuntimeError(f"probe to {url} failed: {rec.error}")
    return rec.ttft, rec.node


async def sweep(args: argparse.Namespace, warm: Proc, cold: Proc, router: Proc) -> list[dict]:
    rows = []
    async with make_client(timeout_s=120) as client, make_client(timeout_s=300) as bg_client:
        # warm: loaded; cold: loaded once (a measured load_s) and unloaded
        rng = random.Random(args.seed)
        jitter = args.busy_tokens * args.decode_ms / 1000.0  # about one busy request's length
        for p in (warm, cold):
            await probe(client, p.url, rng, 0.0)
        await make_cold(client, cold.url, router.url)
        for q in args.queues:
            stop = asyncio.Event()
            loop = [asyncio.create_task(background(bg_client, warm.url, stop, args.busy_tokens, rng))
                    for _ in range(args.slots + q)]
            await asyncio.sleep(args.settle_s)  # the queue forms, the perf window and the router's poll follow
            ttft: dict[str, list[float]] = {"router": [], "warm": [], "cold": []}
            chose: Counter[str] = Counter()
            for _ in range(args.rounds):
                t, node = await probe(client, router.url, rng, jitter)
                ttft["router"].append(t)
                chose[node or "?"] += 1
                if node == "cold":
                    await make_cold(client, cold.url, router.url)
                t, _ = await probe(client, warm.url, rng, jitter)
                ttft["warm"].append(t)
                t, _ = await probe(client, cold.url, rng, jitter)
                ttft["cold"].append(t)
                await make_cold(client, cold.url, router.url)
            stop.set()
            await asyncio.gather(*loop)
            rows.append(summarize_row(q, ttft, dict(chose)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summarize_row(q: int, ttft: dict[str, list[float]], chose: dict[str, int]) -> dict:
    """Means (the expected TTFT: a busy node's wait for a slot is spread over a whole request's
    length, so medians of a few samples swing widely). ``choice_ratio``: the expected TTFT of
    the router's choices (each round's chosen node at that node's forced mean) over the better
    node's; it judges the decision alone. ``router_ratio``: the router's own probes (its choice,
    its proxying and their sampling noise) over the better node's."""
    mean = {k: statistics.fmean(v) for k, v in ttft.items()}
    best = min(mean["warm"], mean["cold"])
    n = sum(chose.values())
    chosen = sum(c * mean[node] for node, c in chose.items() if node in ("warm", "cold")) / n
    return {"queue": q, "router_ms": mean["router"] * 1000, "warm_ms": mean["warm"] * 1000,
            "cold_ms": mean["cold"] * 1000, "choice_ratio": chosen / best, "router_ratio": mean["router"] / best,
            "chose": chose, "samples": {k: [round(x * 1000, 1) for x in v] for k, v in ttft.items()}}


async def run(args: argparse.Namespace) -> dict:
    logdir = Path(tempfile.mkdtemp(prefix="warm_cold_"))
    cfg = node_config(logdir / "node.toml", args.load_s, args.decode_ms)
    procs: list[Proc] = []
    try:
        warm = start_node("warm", cfg, logdir, args.slots)
        procs.append(warm)
        cold = start_node("cold", cfg, logdir, args.slots)
        procs.append(cold)
        router = start_router([warm.url, cold.url], logdir, args.poll_s)
        procs.append(router)
        rows = await sweep(args, warm, cold, router)
    finally:
        for p in reversed(procs):
            p.stop()
    return {"config": {k: v for k, v in vars(args).items() if k not in ("out", "render")}, "rows": rows,
            "goal_met": all(r["choice_ratio"] <= 1.1 for r in rows)}


def markdown(res: dict) -> str:
    c = res["config"]
    out = [f"Sim nodes: {c['slots']} sequence slots, decode step {c['decode_ms']:g} ms, busy requests of "
           f"{c['busy_tokens'] // 2}-{c['busy_tokens'] * 3 // 2} tokens, `target` load {c['load_s']:g} s on the cold "
           f"node; {c['rounds']} rounds per queue length; mean TTFT of a 1-token streaming request.", "",
           "| queue on warm node | warm (forced) | cold (forced) | router chose | router | choice / best | "
           "router / best |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        chose = ", ".join(f"{k} {v}" for k, v in sorted(r["chose"].items()))
        out.append(f"| {r['queue']} | {r['warm_ms']:.0f} ms | {r['cold_ms']:.0f} ms | {chose} | {r['router_ms']:.0f} ms "
                   f"| {r['choice_ratio']:.2f}x | {r['router_ratio']:.2f}x |")
    worst = max(r["choice_ratio"] for r in res["rows"])
    out += ["", f"Goal (the router's choice within 1.1x of the better node at every queue length): "
                f"{'met' if res['goal_met'] else 'missed'}; worst choice / best {worst:.2f}x."]
    return "\n".join(out) + "\n"


def rerender(path: Path) -> dict:
    """Recompute the rows of a saved run from its samples (``--render FILE.json``)."""
    res = json.loads(path.read_text())
    res["rows"] = [summarize_row(r["queue"], {k: [x / 1000 for x in v] for k, v in r["samples"].items()}, r["chose"])
                   for r in res["rows"]]
    res["goal_met"] = all(r["choice_ratio"] <= 1.1 for r in res["rows"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queues", type=int, nargs="+", default=[0, 1, 2, 3, 4, 6, 8, 12],
                    help="requests waiting on the warm node (beyond its busy slots)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slots", type=int, default=2, help="--max-num-seqs of each node")
    ap.add_argument("--load-s", type=float, default=1.0, help="the sim engine's load time of `target`")
    ap.add_argument("--decode-ms", type=float, default=10.0)
    ap.add_argument("--busy-tokens", type=int, default=40, help="max_tokens of the warm node's background requests")
    ap.add_argument("--poll-s", type=float, default=0.2, help="the router's --poll-interval")
    ap.add_argument("--settle-s", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/warm_cold_sweep")
    ap.add_argument("--render", type=Path, default=None, help="re-render a saved FILE.json instead of running")
    args = ap.parse_args()
    save(rerender(args.render) if args.render else asyncio.run(run(args)), Path(args.out), markdown)


if __name__ == "__main__":
    main()
