from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess

os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

DEMO = "edgefleet-demo-random"
NODE_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    from server.demo_model import ensure_demo_model

    return ensure_demo_model()


def vllm_node_args(model_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(model_dir), "--enforce-eager", "--kv-cache-gb", "0.25", "--max-model-len", "1024", *extra]


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path):
    """One real vllm-cpu node shared by the end-to-end tests (an engine takes ~30 s to start)."""
    tmp = tmp_path_factory.mktemp("node")
    proc = NodeProcess(*vllm_node_args(demo_model_dir, "--max-num-seqs", "4", "--max-queued-requests", "4",
                                       "--state-dir", str(tmp / "state"), "--name", "e2e-node", "--zone", "test",
                                       "--label", "rack=1"),
                       log_path=tmp / "node.log", api_key=NODE_KEY)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
