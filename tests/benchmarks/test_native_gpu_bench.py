"""The GPU benchmark's script runs at tiny size on CPU (graphs' path uncaptured), so the one
device session that gets to run it at 8B does not spend its minutes on a broken script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_native_gpu_benchmark_smoke_on_cpu(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "benchmarks.native_gpu", "--device", "cpu", "--shape", "tiny",
                    "--input-len", "16", "--output-len", "4", "--repeats", "1", "--bandwidth-gib", "0.05"],
                   check=True, timeout=300, capture_output=True, cwd=tmp_path, env=env)
    res = json.loads((tmp_path / "benchmarks/results/native_gpu.json").read_text())
    rows = {r["variant"]: r for r in res["rows"]}
    assert set(rows) == {"bf16", "bf16-eager", "int8", "int4", "transformers-bf16"}
    assert rows["bf16"]["graphs"] == "eager" and rows["bf16"]["graph_replays"] > 0
    assert rows["bf16-eager"]["graphs"] is None
    # quantized variants store fewer bytes, and the floor follows the bytes
    assert rows["int4"]["weight_bytes"] < rows["int8"]["weight_bytes"] < rows["bf16"]["weight_bytes"]
    assert rows["int4"]["floor_ms"] < rows["bf16"]["floor_ms"]
    assert all(r["tok_s"] > 0 and r["pct_of_floor"] > 0 for r in rows.values())
    assert {"bf16_pct_of_floor", "int4_over_bf16", "bf16_over_transformers"} <= set(res["meta"]["goals"])
