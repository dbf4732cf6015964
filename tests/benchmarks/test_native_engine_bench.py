"""The native-engine benchmark runs end to end at toy size (native side only: vLLM's side
needs a model load this suite shares elsewhere), so it cannot rot between the runs quoted
in docs/native-engine.md. Its numbers are not checked: speed is measured in benchmarks/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from server.demo_model import TinyLlamaSpec, build_llama_dir

REPO = Path(__file__).resolve().parents[2]


def test_native_engine_benchmark_runs_and_reports(tmp_path):
    model = build_llama_dir(tmp_path / "model", TinyLlamaSpec(hidden_size=64, intermediate_size=128,
                                                              num_attention_heads=4, num_key_value_heads=2,
                                                              vocab_size=512))
    work = tmp_path / "work"  # results land in ./benchmarks/results of the working directory
    work.mkdir()
    env = os.environ | {"PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "benchmarks.native_engine", "--engines", "native", "--model-dir",
                    str(model), "--batch", "1", "2", "--rounds", "2", "--settle", "0", "--input-len", "8",
                    "--output-len", "4", "--kv-gb", "0.01", "--max-model-len", "64"],
                   check=True, timeout=300, capture_output=True, cwd=work, env=env)
    res = json.loads((work / "benchmarks/results/native_engine.json").read_text())
    assert {(r["engine"], r["batch"]) for r in res["rows"]} == {("native", 1), ("native", 2)}
    assert len(res["samples"]["native@1"]) == 2  # one per round
    assert all(r["output_tok_s"] > 0 and r["ttft_s"] > 0 for r in res["rows"])
    assert res["meta"]["bandwidth_gbps"] > 0 and res["meta"]["weight_bytes"] > 0
    assert "| native | 1 |" in (work / "benchmarks/results/native_engine.md").read_text()
