"""Router overhead: streamed requests direct to a fast node vs through the router (and,
as references, through a bare passthrough proxy and the LiteLLM proxy), sequential and at
concurrency 32.

    python -m benchmarks.router_overhead --out results/router_overhead [--litellm /tmp/litellm-venv/bin/litellm]

The node is a sim node with near-zero modelled compute, so what is left is HTTP, JSON and
scheduling: exactly what a proxy adds. Targets are run interleaved (A B C A B C ...) in one
process run, as BENCHMARKS.md asks; the added latency is reported per percentile and as
the median of per-pair differences in the sequential phase. Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from benchmarks.client import Endpoint, SampleRequest, make_client, send
from benchmarks.load import run_load
from benchmarks.metrics import RequestRecord, stats_ms

EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))
MODEL = "sim-model"


# --- processes (shared with routing_quality) ----------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    popen: subprocess.Popen
    url: str
    name: str

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(args: list[str], name: str, logdir: Path, ready_path: str, timeout: float = 90.0,
          url: str | None = None) -> Proc:
    log = open(logdir / f"{name}.log", "w")
    popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc(popen, url or "", name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n" + (logdir / f"{name}.log").read_text()[-2000:])
        try:
            if httpx.get(proc.url + ready_path, timeout=1, trust_env=False).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"{name} not ready after {timeout} s:\n" + (logdir / f"{name}.log").read_text()[-2000:])


def sim_node(name: str, logdir: Path, opts: dict, extra: list[str] = ()) -> Proc:
    port = free_port()
    args = [EDGEFLEET, "serve", "--engine", "sim", "--port", str(port), "--name", name,
            "--served-model-name", MODEL, *extra]
    for k, v in opts.items():
        args += ["--engine-option", f"{k}={json.dumps(v)}"]
    return spawn(args, name, logdir, "/ready", url=f"http://127.0.0.1:{port}")


def router(nodes: list[str], logdir: Path, extra: list[str] = (), name: str = "router") -> Proc:
    port = free_port()
    args = [EDGEFLEET, "route", "--port", str(port), "--log-level", "warning", *extra]
    for n in nodes:
        args += ["--node", n]
    return spawn(args, name, logdir, "/ready", url=f"http://127.0.0.1:{port}")


def passthrough(node_url: str, logdir: Path) -> Proc:
    port = free_port()
    return spawn([sys.executable, "-m", "benchmarks.passthrough_proxy", node_url, str(port)], "passthrough", logdir,
                 "/ready", url=f"http://127.0.0.1:{port}")


def litellm_proxy(binary: str, node_url: str, logdir: Path, master_key: str) -> Proc:
    port = free_port()
    cfg = logdir / "litellm.yaml"
    cfg.write_text(f"""general_settings:
  master_key: {master_key}
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {node_url}/v1
      api_key: none
litellm_settings:
  drop_params: true
  telemetry: false
""")
    env_args = [binary, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    return spawn(env_args, "litellm", logdir, "/health/liveliness", timeout=180, url=f"http://127.0.0.1:{port}")


# --- measurement -----------------------------------------------------------------------

def request(output_len: int) -> SampleRequest:
    return SampleRequest(prompt=[{"role": "user", "content": "hello router"}], prompt_len=4, output_len=output_len)


async def sequential(client: httpx.AsyncClient, eps: list[Endpoint], n: int, output_len: int
                     ) -> dict[str, list[RequestRecord]]:
    out: dict[str, list[RequestRecord]] = {ep.label: [] for ep in eps}
    for i in range(n):
        # Rotate who goes first, so every target takes every position equally often (a plain
        # A B C / C B A alternation would keep the middle target in the middle).
        k = i % len(eps)
        for ep in eps[k:] + eps[:k]:
            out[ep.label].append(await send(client, ep, request(output_len)))
    return out


async def concurrent(client: httpx.AsyncClient, eps: list[Endpoint], n: int, concurrency: int, rounds: int,
                     output_len: int) -> dict[str, dict]:
    recs: dict[str, list[RequestRecord]] = {ep.label: [] for ep in eps}
    durations: dict[str, float] = {ep.label: 0.0 for ep in eps}
    for _ in range(rounds):
        for ep in eps:
            results, duration = await run_load(n, lambda i, ep=ep: send(client, ep, request(output_len)),
                                               max_concurrency=concurrency)
            recs[ep.label] += results
            durations[ep.label] += duration
    return {label: {"records": r, "duration": durations[label]} for label, r in recs.items()}


def describe(records: list[RequestRecord]) -> dict[str, float]:
    ok = [r for r in records if r.success]
    ttft = stats_ms([r.ttft for r in ok])
    e2el = stats_ms([r.latency for r in ok])
    return {"n": len(records), "failed": len(records) - len(ok),
            "p50_ttft_ms": ttft["p50"], "p99_ttft_ms": ttft["p99"],
            "p50_e2el_ms": e2el["p50"], "p99_e2el_ms": e2el["p99"]}


async def run(args: argparse.Namespace) -> dict:
    logdir = Path(tempfile.mkdtemp(prefix="ef-overhead-"))
    procs: list[Proc] = []
    try:
        node = sim_node("fast", logdir, {"prefill_tokens_per_s": 1e9, "decode_ms": args.decode_ms,
                                         "decode_ms_per_seq": 0.0, "max_num_seqs": 256},
                        extra=["--max-num-seqs", "256"])
        procs.append(node)
        # Both proxies check a client key, as they would in use.
        key = "sk-" + secrets.token_hex(24)
        rt = router([node.url], logdir, ["--poll-interval", "1", "--api-key", key])
        procs.append(rt)
        eps = [Endpoint(node.url, MODEL, label="direct", backend="openai-chat"),
               Endpoint(rt.url, MODEL, label="edgefleet-router", backend="openai-chat", api_key=key)]
        # The cost of a bare Python hop (uvicorn + the upstream pool, no logic) on this machine.
        procs.append(passthrough(node.url, logdir))
        eps.append(Endpoint(procs[-1].url, MODEL, label="passthrough-floor", backend="openai-chat"))
        if args.litellm:
            procs.append(litellm_proxy(args.litellm, node.url, logdir, key))
            eps.append(Endpoint(procs[-1].url, MODEL, label="litellm-proxy", backend="openai-chat", api_key=key))
        client = make_client(args.concurrency * 2)
        await sequential(client, eps, 20, args.output_len)  # warm up pools and code paths
        seq = await sequential(client, eps, args.requests, args.output_len)
        conc = await concurrent(client, eps, args.concurrent_requests, args.concurrency, args.rounds, args.output_len)
        await client.aclose()
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(logdir, ignore_errors=True)

    result: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
                    "output_len": args.output_len, "decode_ms": args.decode_ms, "sequential": {}, "concurrent": {}}
    direct_seq = seq["direct"]
    for label, recs in seq.items():
        d = describe(recs)
        if label != "direct":
            pairs = [(r.latency - b.latency) * 1000 for r, b in zip(recs, direct_seq) if r.success and b.success]
            tpairs = [(r.ttft - b.ttft) * 1000 for r, b in zip(recs, direct_seq) if r.success and b.success]
            d["added_p50_e2el_ms"] = d["p50_e2el_ms"] - describe(direct_seq)["p50_e2el_ms"]
            d["added_p99_e2el_ms"] = d["p99_e2el_ms"] - describe(direct_seq)["p99_e2el_ms"]
            d["added_p50_ttft_ms"] = d["p50_ttft_ms"] - describe(direct_seq)["p50_ttft_ms"]
            d["added_p99_ttft_ms"] = d["p99_ttft_ms"] - describe(direct_seq)["p99_ttft_ms"]
            d["median_pairwise_added_e2el_ms"] = float(np.median(pairs)) if pairs else None
            d["median_pairwise_added_ttft_ms"] = float(np.median(tpairs)) if tpairs else None
        result["sequential"][label] = d
    base = describe(conc["direct"]["records"])
    for label, v in conc.items():
        d = describe(v["records"])
        d["requests_per_s"] = sum(r.success for r in v["records"]) / v["duration"]
        if label != "direct":
            for k in ("p50_ttft_ms", "p99_ttft_ms", "p50_e2el_ms", "p99_e2el_ms"):
                d["added_" + k] = d[k] - base[k]
        result["concurrent"][label] = d
    result["concurrency"] = args.concurrency
    return result


def markdown(res: dict) -> str:
    lines = [f"Router overhead ({res['date']}, {res['cpus']} CPUs shared by client, node, router and proxy; "
             f"streamed chat, {res['output_len']} tokens, sim node with {res['decode_ms']} ms/step)", "",
             "| phase | target | p50 TTFT ms | p99 TTFT ms | p50 E2EL ms | p99 E2EL ms | added p50 TTFT ms | "
             "added p99 TTFT ms | added p50 E2EL ms | added p99 E2EL ms | median pairwise added ms | req/s | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for phase in ("sequential", "concurrent"):
        for label, d in res[phase].items():
            def f(key: str) -> str:
                v = d.get(key)
                return "-" if v is None else f"{v:.2f}"
            name = phase if phase == "sequential" else f"concurrency {res['concurrency']}"
            lines.append(f"| {name} | {label} | {f('p50_ttft_ms')} | {f('p99_ttft_ms')} | {f('p50_e2el_ms')} | "
                         f"{f('p99_e2el_ms')} | {f('added_p50_ttft_ms')} | {f('added_p99_ttft_ms')} | "
                         f"{f('added_p50_e2el_ms')} | {f('added_p99_e2el_ms')} | "
                         f"{f('median_pairwise_added_e2el_ms')} | {f('requests_per_s')} | {d['failed']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per target")
    ap.add_argument("--concurrent-requests", type=int, default=320, help="requests per target per round")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--decode-ms", type=float, default=1.0)
    ap.add_argument("--litellm", default=None, help="path of a `litellm` binary (in a throwaway venv)")
    ap.add_argument("--out", default="results/router_overhead")
    args = ap.parse_args()
    save(asyncio.run(run(args)), Path(args.out), markdown)


def save(res: dict, out: Path, render) -> None:
    """Write ``out``.json and ``out``.md (from ``render``) and print the Markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    md = render(res)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
