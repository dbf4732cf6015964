"""Routing quality: a heterogeneous sim fleet under Poisson load, one run per policy.

    python -m benchmarks.routing_quality --out results/routing_quality [--rate 4 --requests 200]
    python -m benchmarks.routing_quality --workload agent --chains 32 --rates 0.5 1 2 4 --seeds 0 1 2

``--workload agent`` is the agent-session sweep (benchmarks/agent_routing.py: a discrete-
event simulation driving the router's real policies and prefix index); it also reruns
the independent-request workload in the same simulation for nearest_idle vs cache_blind.
The default, ``independent``, is the process benchmark below.

Nodes differ in prefill speed, decode step time, batch slots and network distance. The
distance is real: each node sits behind a TCP delay proxy (every byte, both directions,
is held for half the RTT), so the router sees it in its capacity polls just as the
client's requests feel it. Every policy gets the same seeded arrival times and request
sizes; the node performance windows are warmed before the first policy. Reported per
policy: p50/p99 TTFT, p50 E2EL, goodput (requests meeting the SLOs per second) and how
the requests were spread. Not a timed test.

Nodes run the SIMULATED engine (``--engine sim``): latencies are modelled, text is
placeholder.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from benchmarks.client import Endpoint, SampleRequest, make_client, send
from benchmarks.load import arrival_offsets, run_load
from benchmarks.metrics import is_good, parse_goodput, summarize
from benchmarks.router_overhead import MODEL, Proc, router, save, sim_node

POLICIES = ("round_robin", "random", "least_loaded", "cache_blind", "cache_aware", "session_sticky", "nearest_idle")


@dataclass(frozen=True)
class NodeShape:
    name: str
    rtt_ms: float
    opts: dict


FLEET = (
    NodeShape("gpu-big-far", 30.0, {"prefill_tokens_per_s": 8000, "decode_ms": 10, "decode_ms_per_seq": 0.2,
                                    "max_num_seqs": 32}),
    NodeShape("gpu-small", 4.0, {"prefill_tokens_per_s": 3000, "decode_ms": 20, "decode_ms_per_seq": 0.5,
                                 "max_num_seqs": 16}),
    NodeShape("cpu-box", 1.0, {"prefill_tokens_per_s": 1500, "decode_ms": 50, "decode_ms_per_seq": 2,
                               "max_num_seqs": 8}),
    NodeShape("old-laptop-far", 40.0, {"prefill_tokens_per_s": 800, "decode_ms": 80, "decode_ms_per_seq": 3,
                                       "max_num_seqs": 4}),
)


class DelayProxy:
    """A TCP proxy on loopback that delays every byte by ``one_way_s`` in each direction."""

    def __init__(self, target_port: int, one_way_s: float):
        self.target_port = target_port
        self.one_way_s = one_way_s
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + self.one_way_s, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait((0.0, b""))
            await asyncio.gather(task, return_exceptions=True)


def workload(n: int, seed: int) -> list[SampleRequest]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt_tokens = int(rng.integers(100, 1500))
        out.append(SampleRequest(prompt=[{"role": "user", "content": "edge " * (prompt_tokens * 4 // 5)}],
                                 prompt_len=prompt_tokens, output_len=int(rng.integers(16, 96))))
    return out


async def wait_idle(urls: list[str], timeout: float = 300.0) -> None:
    async with httpx.AsyncClient(trust_env=False) as c:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loads = [(await c.get(u + "/v1/capacity")).json()["load"] for u in urls]
            if all(x["running"] == 0 and x["waiting"] == 0 for x in loads):
                return
            await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> dict:
    logdir = Path(tempfile.mkdtemp(prefix="ef-quality-"))
    procs: list[Proc] = []
    proxies: list[DelayProxy] = []
    slos = parse_goodput(args.goodput)
    try:
        for shape in FLEET:
            node = sim_node(shape.name, logdir, shape.opts, extra=["--max-num-seqs", str(shape.opts["max_num_seqs"]),
                                                                   "--max-queued-requests", "1000"])
            procs.append(node)
            proxy = DelayProxy(int(node.url.rsplit(":", 1)[1]), shape.rtt_ms / 2000.0)
            await proxy.start()
            proxies.append(proxy)
        urls = [f"http://127.0.0.1:{p.port}" for p in proxies]
        requests = workload(args.requests, args.seed)
        offsets = arrival_offsets(args.requests, args.rate, 1.0, np.random.default_rng(args.seed))
        client = make_client(None)
        # Warm every node's performance window so no policy runs against cold predictions.
        warm = workload(6, args.seed + 1)
        for u in urls:
            ep = Endpoint(u, MODEL, backend="openai-chat")
            for r in warm:
                await send(client, ep, r)
        results: dict[str, list] = {p: [] for p in args.policies}
        order = list(args.policies)
        for pas in range(args.passes):
            for policy in (order if pas % 2 == 0 else list(reversed(order))):
                # In a thread: the delay proxies live on this event loop and must keep running.
                flags = ["--policy", policy, "--seed", str(args.seed), "--poll-interval", str(args.poll_interval),
                         "--first-byte-timeout", "300", "--total-deadline", "300"]
                rt = await asyncio.to_thread(router, urls, logdir, flags, name=f"router-{policy}-{pas}")
                try:
                    await asyncio.sleep(2 * args.poll_interval)
                    ep = Endpoint(rt.url, MODEL, label=policy, backend="openai-chat")
                    recs, duration = await run_load(args.requests, lambda i: send(client, ep, requests[i]),
                                                    offsets=offsets)
                finally:
                    await asyncio.to_thread(rt.stop)
                results[policy].append((recs, duration))
                print(f"pass {pas} {policy}: {duration:.1f} s", flush=True)
                await wait_idle([p.url for p in procs])
        await client.aclose()
    finally:
        for p in proxies:
            await p.stop()
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(logdir, ignore_errors=True)

    names = {f"127.0.0.1:{p.port}": s.name for p, s in zip(proxies, FLEET)}
    out: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rate": args.rate,
                 "requests": args.requests, "passes": args.passes, "seed": args.seed, "slos_ms": slos,
                 "fleet": [{"name": s.name, "rtt_ms": s.rtt_ms, **s.opts} for s in FLEET], "policies": {}}
    for policy, runs in results.items():
        recs = [r for rs, _ in runs for r in rs]
        duration = sum(d for _, d in runs)
        s = summarize(recs, duration, slos)
        spread = Counter(names.get(r.node or "", r.node) for r in recs if r.success)
        out["policies"][policy] = {
            "p50_ttft_ms": s["p50_ttft_ms"], "p99_ttft_ms": s["p99_ttft_ms"], "p50_e2el_ms": s["median_e2el_ms"],
            "goodput_rps": s["request_goodput"], "throughput_rps": s["request_throughput"],
            "slo_attainment": sum(is_good(r, slos) for r in recs if r.success) / max(1, len(recs)),
            "completed": s["completed"], "failed": s["failed"], "spread": dict(spread)}
    base = out["policies"].get("round_robin")
    ni = out["policies"].get("nearest_idle")
    if base and ni:
        out["nearest_idle_vs_round_robin"] = {
            "p99_ttft_ratio": ni["p99_ttft_ms"] / base["p99_ttft_ms"],
            "goodput_ratio": (ni["goodput_rps"] / base["goodput_rps"]) if base["goodput_rps"] else None}
    return out


def markdown(res: dict) -> str:
    slo = ", ".join(f"{k} <= {v:g} ms" for k, v in res["slos_ms"].items())
    lines = [f"Routing quality ({res['date']}; SIMULATED fleet of {len(res['fleet'])} nodes; Poisson "
             f"{res['rate']} req/s, {res['requests']} requests x {res['passes']} pass(es) per policy; goodput SLO: {slo})",
             "", "| policy | p50 TTFT ms | p99 TTFT ms | p50 E2EL ms | goodput req/s | SLO met | failed | spread |",
             "|---|---|---|---|---|---|---|---|"]
    for policy, d in res["policies"].items():
        spread = ", ".join(f"{k}: {v}" for k, v in sorted(d["spread"].items()))
        lines.append(f"| {policy} | {d['p50_ttft_ms']:.0f} | {d['p99_ttft_ms']:.0f} | {d['p50_e2el_ms']:.0f} | "
                     f"{d['goodput_rps']:.2f} | {100 * d['slo_attainment']:.0f}% | {d['failed']} | {spread} |")
    if "nearest_idle_vs_round_robin" in res:
        r = res["nearest_idle_vs_round_robin"]
        good = "-" if r["goodput_ratio"] is None else f"{r['goodput_ratio']:.2f}x"
        lines += ["", f"nearest_idle vs round_robin: p99 TTFT {r['p99_ttft_ratio']:.2f}x, goodput {good}"]
    lines += ["", "Fleet: " + "; ".join(
        f"{n['name']} (RTT {n['rtt_ms']:g} ms, prefill {n['prefill_tokens_per_s']} tok/s, step {n['decode_ms']}"
        f"+{n['decode_ms_per_seq']}/seq ms, {n['max_num_seqs']} slots)" for n in res["fleet"])]
    return "\n".join(lines) + "\n"


def agent_sweep(args: argparse.Namespace) -> dict:
    from benchmarks import agent_routing as ar

    out: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "chains": args.chains,
                 "steps": args.steps, "seeds": args.seeds, "rates": {}, "independent": {},
                 "fleet": []}
    fleet = ar.FLEETS[args.fleet]
    out["fleet_kind"] = args.fleet
    out["fleet"] = [{"name": s.name, "rtt_ms": s.rtt_ms, "prefill_tokens_per_s": s.prefill_tokens_per_s,
                     "decode_ms": s.decode_ms, "decode_ms_per_seq": s.decode_ms_per_seq,
                     "max_num_seqs": s.max_num_seqs, "kv_tokens": s.kv_tokens} for s in fleet]
    keys = ("chain_p50_s", "chain_p99_s", "ttft_p50_s", "ttft_p99_s", "hit_rate", "goodput_sps")
    for rate in args.rates:
        row: dict = {}
        for policy in [*args.agent_policies, "single_node"]:
            runs = []
            for seed in args.seeds:
                chains = ar.make_chains(args.chains, args.steps, rate, seed)
                if policy == "single_node":
                    runs.append(ar.run_agent(ar.single_node(fleet), "round_robin", chains, seed))
                else:
                    runs.append(ar.run_agent(fleet, policy, chains, seed))
            row[policy] = {k: float(np.mean([r[k] for r in runs])) for k in keys}
            print(f"rate {rate} {policy}: " + ", ".join(f"{k} {row[policy][k]:.2f}" for k in keys), flush=True)
        out["rates"][rate] = row
    for rate in args.independent_rates:
        out["independent"][rate] = {
            p: {k: float(np.mean([ar.run_independent(fleet, p, args.requests, rate, s)[k] for s in args.seeds]))
                for k in ("ttft_p50_s", "ttft_p99_s", "e2el_p50_s")} for p in ("cache_blind", "nearest_idle")}
    return out


def agent_goals(row: dict) -> dict:
    ni, cb, orc = row["nearest_idle"], row["cache_blind"], row["oracle"]
    best_other = min(row["cache_aware"]["chain_p99_s"], row["session_sticky"]["chain_p99_s"])
    return {"vs_cache_blind": ni["chain_p99_s"] / cb["chain_p99_s"], "vs_best_cache_router": ni["chain_p99_s"] / best_other,
            "hit_vs_single": ni["hit_rate"] / row["single_node"]["hit_rate"],
            "vs_oracle": ni["chain_p99_s"] / orc["chain_p99_s"]}


def agent_markdown(res: dict) -> str:
    lines = [f"Agent sessions ({res['date']}; SIMULATED: discrete-event model of the {res.get('fleet_kind', 'hetero')} 4-node fleet driving the "
             f"router's real policies and prefix index; {res['chains']} chains x {res['steps']} steps, Poisson chain "
             f"arrivals; mean of seeds {res['seeds']}; goodput = steps with TTFT <= 2 s per second)", ""]
    for rate, row in res["rates"].items():
        lines += [f"**{rate} chains/s**", "",
                  "| policy | chain p50 s | chain p99 s | step TTFT p50 s | step TTFT p99 s | prefix-hit rate | goodput steps/s |",
                  "|---|---|---|---|---|---|---|"]
        for policy, d in row.items():
            lines.append(f"| {policy} | {d['chain_p50_s']:.1f} | {d['chain_p99_s']:.1f} | {d['ttft_p50_s']:.2f} | "
                         f"{d['ttft_p99_s']:.2f} | {d['hit_rate']:.2f} | {d['goodput_sps']:.2f} |")
        g = agent_goals(row)
        lines += ["", f"nearest_idle p99 chain time: {g['vs_cache_blind']:.2f}x cache_blind (goal <= 0.5), "
                      f"{g['vs_best_cache_router']:.2f}x best of cache_aware/session_sticky (goal <= 0.8), "
                      f"{g['vs_oracle']:.2f}x oracle (goal <= 1.1); hit rate {g['hit_vs_single']:.2f}x a single node's "
                      "(goal >= 0.9)", ""]
    if res["independent"]:
        lines += ["Independent requests (the existing workload, same simulation):", "",
                  "| rate req/s | cache_blind TTFT p50 / p99 s | nearest_idle TTFT p50 / p99 s | p99 ratio |", "|---|---|---|---|"]
        for rate, d in res["independent"].items():
            cb, ni = d["cache_blind"], d["nearest_idle"]
            lines.append(f"| {rate} | {cb['ttft_p50_s']:.2f} / {cb['ttft_p99_s']:.2f} | {ni['ttft_p50_s']:.2f} / "
                         f"{ni['ttft_p99_s']:.2f} | {ni['ttft_p99_s'] / cb['ttft_p99_s']:.2f}x |")
    lines += ["", "Fleet: " + "; ".join(
        f"{n['name']} (RTT {n['rtt_ms']:g} ms, prefill {n['prefill_tokens_per_s']:g} tok/s, step {n['decode_ms']:g}"
        f"+{n['decode_ms_per_seq']:g}/seq ms, {n['max_num_seqs']} slots, KV {n['kv_tokens'] // 1000}k tokens)"
        for n in res["fleet"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--poll-interval", type=float, default=1.0)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--goodput", nargs="+", default=["ttft:1000", "tpot:100"])
    ap.add_argument("--out", default="results/routing_quality")
    ap.add_argument("--workload", choices=("independent", "agent"), default="independent")
    ap.add_argument("--chains", type=int, default=32, help="agent: chains per run")
    ap.add_argument("--steps", type=int, default=8, help="agent: calls per chain")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.5, 1, 2, 4], help="agent: chain arrivals per second")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="agent: one run per seed, averaged")
    ap.add_argument("--independent-rates", type=float, nargs="*", default=[2, 4, 8],
                    help="agent: independent-request rates for the nearest_idle vs cache_blind check")
    ap.add_argument("--agent-policies", nargs="+", default=None)
    ap.add_argument("--fleet", choices=("hetero", "homogeneous"), default="hetero",
                    help="agent: the routing_quality fleet, or four like GPUs")
    args = ap.parse_args()
    if args.workload == "agent":
        from benchmarks.agent_routing import AGENT_POLICIES

        args.agent_policies = args.agent_policies or list(AGENT_POLICIES)
        save(agent_sweep(args), Path(args.out), agent_markdown)
        return
    save(asyncio.run(run(args)), Path(args.out), markdown)


if __name__ == "__main__":
    main()
