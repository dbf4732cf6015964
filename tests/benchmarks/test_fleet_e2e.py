"""`edgefleet bench fleet` through a real router in front of two simulated nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.router.conftest import Launcher

EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))


@pytest.mark.e2e
def test_fleet_node_shares_through_a_router(tmp_path):
    launch = Launcher(tmp_path)
    try:
        a = launch.node("bench-a", model="sim-model")
        b = launch.node("bench-b", model="sim-model")
        router = launch.router("--node", a.url, "--node", b.url, "--policy", "round_robin", "--poll-interval", "0.2")
        prompts = tmp_path / "p.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"hello {i}"}) + "\n" for i in range(4)))
        out = subprocess.run([EDGEFLEET, "bench", "fleet", "--base-url", router.url, "--model", "sim-model",
                              "--backend", "openai-chat", "--dataset-name", "custom", "--dataset-path", str(prompts),
                              "--custom-output-len", "8", "--num-prompts", "16", "--max-concurrency", "2",
                              "--save-result", "--result-dir", str(tmp_path / "res"), "--disable-tqdm"],
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        direct = subprocess.run([EDGEFLEET, "bench", "serve", "--base-url", a.url, "--model", "sim-model",
                                 "--dataset-name", "custom", "--dataset-path", str(prompts), "--custom-output-len", "4",
                                 "--num-prompts", "2", "--save-result", "--result-dir", str(tmp_path / "direct"),
                                 "--disable-tqdm"], capture_output=True, text=True, timeout=180)
        assert direct.returncode == 0, direct.stderr[-3000:]
    finally:
        launch.close()
    res = json.loads(next((tmp_path / "res").glob("*.json")).read_text())
    assert res["completed"] == 16 and res["failed"] == 0
    nodes = res["nodes"]
    assert len(nodes) == 2 and sum(n["requests"] for n in nodes.values()) == 16
    assert all(n["share"] >= 0.25 for n in nodes.values())  # both nodes took a real share
    assert all(n["mean_ttft_ms"] > 0 for n in nodes.values())
    assert "TOTAL" in out.stdout and "100.0%" in out.stdout
    fleet = res["context"]["fleet"]  # the router's /v1/fleet: every node with its capacity document
    assert res["context"]["target"] == "edgefleet-router"
    assert sorted(n["name"] for n in fleet["nodes"]) == ["bench-a", "bench-b"]
    node = json.loads(next((tmp_path / "direct").glob("*.json")).read_text())
    assert node["context"]["target"] == "edgefleet"
    assert node["context"]["capacity"]["identity"]["name"] == "bench-a"
    assert "edgefleet node bench-a (engine sim" in next((tmp_path / "direct").glob("*.md")).read_text()
