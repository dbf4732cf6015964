"""Agreement with vLLM's own benchmark module (`vllm.benchmarks.serve`), in three layers.

1. Real server, same workload and seed, `vllm bench serve`'s own code path (`main_async`)
   then ours, sequentially; and paired (both at once in one event loop, vLLM's side being
   its module's `benchmark()` coroutine). Request and token counts must match exactly.
2. Arithmetic: vLLM's `calculate_metrics` applied to the requests we measured gives every
   run-level number we report (throughputs, goodput, mean/median/std/p50-p99 of TTFT,
   TPOT, ITL, E2EL) to 1e-9.
3. Measurement: vLLM's request functions and ours on the same scripted SSE stream with
   known timings (completions and chat): mean TTFT, TPOT and E2EL within 5 %.

Why timing on the real server is not held to 5 %: on these machines (2 cores shared by
several agents; load average 10-40 during the suite) the vLLM CPU server streams in bursts
when starved, so one prompt's TTFT swings between ~15 and ~400 ms request to request with
*either* tool, and two consecutive runs of the *same* tool differ by 20 % to 2.5x. Runs
paired in one event loop share that noise but then compete for the server's event loop,
which moves TTFT by tens of percent in favour of one client. So on the real server the counts are
exact and the paired throughput and E2EL (which the competition barely moves) must agree
within 25 %; every ratio is printed. Layers 2 and 3 are where 5 % (or exactness) is
meaningful, and they hold it: together they say the two tools define and measure each
metric the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks.conftest import SERVED

DRIVER = Path(__file__).with_name("agreement_driver.py")
N, IN, OUT, CONC = 16, 128, 32, 2
TIMING = ("output_throughput", "request_throughput", "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms", "mean_e2el_ms")


def pooled(rows: list[dict], key: str) -> float:
    return float(np.mean([r["ours"][key] for r in rows]) / np.mean([r["vllm"][key] for r in rows]))


@pytest.fixture(scope="module")
def agreement(vllm_server, demo_model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("agreement") / "agreement.json"
    proc = subprocess.run([sys.executable, str(DRIVER), vllm_server.url, SERVED, str(demo_model_dir), str(out),
                           "1", "1", str(N), str(IN), str(OUT), str(CONC)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.e2e
def test_real_server_counts_exact_and_timing_sane(agreement):
    for row in agreement["sequential"] + agreement["paired"]:
        for tool in ("vllm", "ours"):
            r = row[tool]
            assert (r["completed"], r["failed"]) == (N, 0)
            assert r["total_input_tokens"] == N * IN
            assert r["total_output_tokens"] == N * OUT
    for mode in ("sequential", "paired"):
        print(f"{mode} ratios ours/vllm:", json.dumps({k: pooled(agreement[mode], k) for k in TIMING}))
    for k in ("output_throughput", "request_throughput", "mean_e2el_ms"):
        assert 0.8 < pooled(agreement["paired"], k) < 1.25, k


@pytest.mark.e2e
def test_vllm_arithmetic_on_our_measurements_is_identical(agreement):
    theirs, ours = agreement["arithmetic"]["vllm"], agreement["arithmetic"]["ours"]
    assert len(theirs) == 7 + 4 * 7  # run-level + {mean,median,std,p50,p90,p95,p99} x 4 metrics
    assert theirs["completed"] == N and theirs["request_goodput"] >= 0
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


@pytest.mark.e2e
def test_vllm_request_functions_and_ours_measure_the_same_stream(agreement):
    exp = agreement["scripted"]["expected"]
    for chat in (False, True):
        rows = [r for r in agreement["scripted"]["rows"] if r["chat"] == chat]
        for tool in ("ours", "vllm"):
            for r in rows:
                assert r[tool]["n"] == exp["n"] and len(r[tool]["itl"]) == len(exp["itl"])

        def mean(tool: str, f) -> float:
            return float(np.mean([f(r[tool]) for r in rows]))

        for name, f in (("ttft", lambda m: m["ttft"]), ("e2el", lambda m: m["latency"]),
                        ("tpot", lambda m: (m["latency"] - m["ttft"]) / (m["n"] - 1))):
            assert mean("ours", f) == pytest.approx(mean("vllm", f), rel=0.05), (chat, name)
        assert mean("ours", lambda m: m["ttft"]) == pytest.approx(exp["ttft"], abs=0.04)
        assert mean("ours", lambda m: m["latency"]) == pytest.approx(exp["latency"], abs=0.06)
