"""edgefleet serve vs vLLM's own OpenAI server, same engine, same model, one interleaved run.

Starts both servers on the same model with the same engine settings, then drives them with
`edgefleet bench serve --compare` (interleaved rounds, same seed) at each concurrency and
prints the ratios edgefleet / vLLM: output throughput (want >= 1.0), TTFT and ITL p50/p99
(want <= 1.0).

    .venv/bin/python -m benchmarks.node_vs_vllm --concurrency 1 --concurrency 32

Both servers stay up for the whole run but only one is driven at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx

from server.demo_model import DEMO_MODEL_ID, ensure_demo_model

BIN = Path(sys.executable).parent
KEYS = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms", "median_tpot_ms")


def _wait(url: str, proc: subprocess.Popen, path: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout} s")


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


@click.command()
@click.option("--model", type=click.Path(file_okay=False), default=None, help="Model dir (default: demo model).")
@click.option("--concurrency", "levels", type=int, multiple=True, default=(1, 32), show_default=True)
@click.option("--num-prompts", type=int, default=None, help="Per level (default: 16 x concurrency, >= 32).")
@click.option("--input-len", type=int, default=256, show_default=True)
@click.option("--output-len", type=int, default=128, show_default=True)
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option("--eager/--compile", default=True, show_default=True, help="Engine mode for both servers.")
@click.option("--result-dir", type=click.Path(file_okay=False), default="results/node_vs_vllm", show_default=True)
def main(model: str | None, levels: tuple[int, ...], num_prompts: int | None, input_len: int, output_len: int,
         rounds: int, dtype: str, eager: bool, result_dir: str) -> None:
    model_dir = Path(model) if model else ensure_demo_model()
    out = Path(result_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Same engine settings for both; VLLM_CPU_NUM_OF_RESERVED_CPU alike for both.
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")}
    common_kv = str(512 << 20)
    vllm_cmd = [str(BIN / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                "--served-model-name", DEMO_MODEL_ID, "--port", "8301", "--dtype", dtype, "--max-num-seqs", "32",
                "--kv-cache-memory-bytes", common_kv, "--max-model-len", "2048"]
    ef_cmd = [str(BIN / "edgefleet"), "serve", "--model", str(model_dir), "--port", "8302", "--dtype", dtype,
              "--max-num-seqs", "32", "--kv-cache-gb", str(0.5), "--max-model-len", "2048", "--log-level", "warning"]
    if eager:
        vllm_cmd.append("--enforce-eager")
        ef_cmd.append("--enforce-eager")
    else:
        ef_cmd.append("--no-enforce-eager")
    procs = [_start(vllm_cmd, out / "vllm.log", env), _start(ef_cmd, out / "edgefleet.log", env)]
    try:
        _wait("http://127.0.0.1:8301", procs[0], "/health")
        _wait("http://127.0.0.1:8302", procs[1], "/ready")
        table = []
        for c in levels:
            n = num_prompts or max(32, 16 * c)
            cmd = [str(BIN / "edgefleet"), "bench", "serve", "--base-url", "http://127.0.0.1:8301",
                   "--label", "vllm-serve", "--compare", "http://127.0.0.1:8302,label=edgefleet-serve",
                   "--model", DEMO_MODEL_ID, "--tokenizer", str(model_dir), "--dataset-name", "random",
                   "--random-input-len", str(input_len), "--random-output-len", str(output_len),
                   "--num-prompts", str(n), "--max-concurrency", str(c), "--rounds", str(rounds),
                   "--num-warmups", "2", "--seed", "0", "--save-result", "--result-dir", str(out / f"c{c}"),
                   "--disable-tqdm"]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            results = [json.loads(p.read_text()) for p in sorted((out / f"c{c}").glob("*.json"))]
            by_label = {r.get("label"): r for r in results}
            ef, vl = by_label.get("edgefleet-serve"), by_label.get("vllm-serve")
            if ef and vl:
                table.append((c, {k: (ef[k] / vl[k]) if vl.get(k) else float("nan") for k in KEYS}, ef, vl))
        lines = ["| concurrency | output tok/s (edgefleet / vLLM) | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |",
                 "|---|---|---|---|---|---|"]
        for c, ratio, ef, vl in table:
            lines.append(f"| {c} | {ef['output_throughput']:.1f} / {vl['output_throughput']:.1f} = "
                         f"**{ratio['output_throughput']:.3f}** | {ratio['median_ttft_ms']:.3f} | "
                         f"{ratio['p99_ttft_ms']:.3f} | {ratio['median_itl_ms']:.3f} | {ratio['p99_itl_ms']:.3f} |")
        md = "\n".join(lines)
        (out / "summary.md").write_text(md + "\n")
        print(md)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 15)
                p.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, 9)


if __name__ == "__main__":
    main()
