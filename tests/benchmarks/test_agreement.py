"""Agreement with vLLM's own benchmark: same server, same workload, same seed.

Token and request counts must match exactly. For timing, the two tools are compared both
sequentially (one after the other, as a user would) and paired (both at once in one event
loop, each with its own concurrency gate). On this project's machines (2 cores shared by
several agents, load average 10 to 40 while the suite runs), two consecutive sequential
runs of the *same* tool differ by 20 % to 2x, so a 5 % bound on sequential timing would
test the neighbours, not the benchmark. Paired runs see the same server state, so what
is left is how each tool measures: that is held to 5 % (throughput, TPOT, median TTFT;
mean TTFT, whose tail is the machine's scheduling noise, to 10 %). The server runs without
prefix caching, so whichever tool goes second gets no cache hits from the first.
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
N, IN, OUT, CONC = 100, 256, 32, 2


def pooled(rows: list[dict], key: str) -> float:
    return float(np.mean([r["ours"][key] for r in rows]) / np.mean([r["vllm"][key] for r in rows]))


@pytest.mark.e2e
def test_agrees_with_vllm_bench_serve(vllm_server, demo_model_dir, tmp_path):
    out = tmp_path / "agreement.json"
    proc = subprocess.run([sys.executable, str(DRIVER), vllm_server.url, SERVED, str(demo_model_dir), str(out),
                           "1", "2", str(N), str(IN), str(OUT), str(CONC)],
                          capture_output=True, text=True, timeout=400, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for row in res["sequential"] + res["paired"]:
        for tool in ("vllm", "ours"):
            r = row[tool]
            assert (r["completed"], r["failed"]) == (N, 0)
            assert r["total_input_tokens"] == N * IN
            assert r["total_output_tokens"] == N * OUT
    paired = res["paired"]
    ratios = {k: pooled(paired, k) for k in ("output_throughput", "request_throughput", "mean_tpot_ms",
                                             "median_ttft_ms", "mean_ttft_ms", "mean_e2el_ms")}
    print("paired ratios ours/vllm:", json.dumps(ratios))
    print("sequential ratios ours/vllm:", json.dumps({k: pooled(res["sequential"], k) for k in ratios}))
    for key in ("output_throughput", "request_throughput", "mean_tpot_ms", "median_ttft_ms", "mean_e2el_ms"):
        assert ratios[key] == pytest.approx(1.0, abs=0.05), (key, ratios)
    assert ratios["mean_ttft_ms"] == pytest.approx(1.0, abs=0.10), ratios
