"""Several models on one node: time to first token when the model is cold, warm, or swapped in.

    python -m benchmarks.model_host --engine native --rounds 5
    VLLM_CPU_NUM_OF_RESERVED_CPU=0 python -m benchmarks.model_host --engine vllm --rounds 2

Starts one real node (``edgefleet serve --model DEMO --model SECOND``: the demo model and a
smaller random fixture) and measures streaming TTFT (first SSE event with a choice, minus the
send; BENCHMARKS.md) of a 1-token-prompt chat request with max_tokens 2:

- warm: the model is loaded and idle;
- cold: the model was unloaded with ``POST /v1/models/{id}/unload`` just before (the node has
  been up, so the engine's libraries are already imported: what a request meets on a node
  that has served before);
- swap: a second node whose ``--memory-budget`` holds one model only; requests alternate
  between the two, so each one unloads the other model and loads its own.

Rounds interleave (warm, cold, swap ...) so drifts in the shared machine's speed land on all
three. Sleep/wake is not measured on CPU: neither vllm-cpu 0.32 nor the native engine has a
sleep mode there (docs/node.md). Writes benchmarks/results/model_host_<engine>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

OUT = Path("benchmarks/results")
SECOND_ID = "bench-second"


def second_model() -> Path:
    from server.demo_model import TinyLlamaSpec, build_llama_dir, cache_dir

    path = cache_dir() / "bench-second-v1"
    if not (path / "config.json").exists():
        build_llama_dir(path, TinyLlamaSpec(hidden_size=128, intermediate_size=256, seed=7), model_id=SECOND_ID)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(engine: str, models: list[Path], budget: str | None, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("edgefleet")), "serve", "--engine", engine, "--port", str(port),
           "--keep-alive", "-1", "--max-model-len", "512", "--kv-cache-gb", "0.05", "--max-num-seqs", "4"]
    for m in models:
        cmd += ["--model", str(m)]
    if engine == "vllm":
        cmd += ["--enforce-eager"]
    if budget:
        cmd += ["--memory-budget", budget]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(log.read_text()[-2000:])


def ttft(url: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    start = time.perf_counter()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {r.status_code} {r.read()[:300]!r}")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:]).get("choices"):
                return time.perf_counter() - start
    raise RuntimeError("no token")


def admin(url: str, model: str, action: str) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/models/{model}/{action}", timeout=600)
    r.raise_for_status()
    return r.json()


def summary(xs: list[float]) -> dict[str, float]:
    return {"median_ms": round(1000 * statistics.median(xs), 1), "min_ms": round(1000 * min(xs), 1),
            "max_ms": round(1000 * max(xs), 1), "n": len(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["native", "vllm"], default="native")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from server.demo_model import DEMO_MODEL_ID, ensure_demo_model

    demo, second = ensure_demo_model(), second_model()
    OUT.mkdir(parents=True, exist_ok=True)
    node, url = start_node(args.engine, [demo, second], None, OUT / f"model_host_{args.engine}_node.log")
    # a budget that holds either model alone, not both
    sizes = {m["id"]: m["memory_bytes"] for m in httpx.get(url + "/v1/models").json()["data"]}
    budget = f"{int(max(sizes.values()) * 1.2)}"
    swap_node, swap_url = start_node(args.engine, [demo, second], budget,
                                     OUT / f"model_host_{args.engine}_swap.log")
    warm, cold, swap, load_s = [], [], [], []
    try:
        for u in (url, swap_url):  # imports and first-use costs, out of the measurement
            for m in (DEMO_MODEL_ID, SECOND_ID):
                ttft(u, m)
        for _ in range(args.rounds):
            warm.append(ttft(url, DEMO_MODEL_ID))
            admin(url, DEMO_MODEL_ID, "unload")
            cold.append(ttft(url, DEMO_MODEL_ID))
            load_s.append(next(m for m in httpx.get(url + "/v1/models").json()["data"]
                               if m["id"] == DEMO_MODEL_ID)["load_s"])
            ttft(swap_url, SECOND_ID)  # the swap node now holds SECOND only
            swap.append(ttft(swap_url, DEMO_MODEL_ID))
    finally:
        for p in (node, swap_node):
            p.terminate()
            p.wait(60)
    result = {"engine": args.engine, "model": DEMO_MODEL_ID, "rounds": args.rounds, "warm": summary(warm),
              "cold": summary(cold), "swap": summary(swap), "node_load_s": summary(load_s),
              "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 1),
              "sleeping": "not measured: no sleep mode on CPU (vllm-cpu 0.32, native engine)",
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    (OUT / f"model_host_{args.engine}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"| {args.engine} | TTFT median (min-max) ms |", "|---|---|"]
    for k in ("warm", "cold", "swap", "node_load_s"):
        s = result[k]
        md.append(f"| {k} | {s['median_ms']} ({s['min_ms']}-{s['max_ms']}) |")
    md.append(f"| cold / warm | {result['cold_over_warm']}x |")
    (OUT / f"model_host_{args.engine}.md").write_text("\n".join(md) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
