"""Start real `edgefleet serve` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeProcess:
    """One `edgefleet serve` subprocess with its log captured to a file."""

    def __init__(self, *args: str, port: int | None = None, log_path: Path, env: dict[str, str] | None = None,
                 api_key: str | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log_path = log_path
        cmd = [str(VENV_BIN / "edgefleet"), "serve", "--port", str(self.port), *args]
        if api_key:
            cmd += ["--api-key", api_key]
        full_env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
                    **(env or {})}
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True)
        self.observed_while_loading: dict[str, int] = {}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def wait_ready(self, timeout: float = 240.0, model: str = "edgefleet-demo-random") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.read_log()[-3000:]}")
            try:
                r = httpx.get(self.url + "/ready", timeout=2)
                if r.status_code == 200:
                    return
                # Seen while the model loads (RELIABILITY D1): record for the tests.
                self.observed_while_loading.setdefault("ready", r.status_code)
                self.observed_while_loading.setdefault("health", httpx.get(self.url + "/health", timeout=2).status_code)
                chat = httpx.post(self.url + "/v1/chat/completions", headers=self.headers, timeout=5,
                                  json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
                self.observed_while_loading.setdefault("chat", chat.status_code)
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"node not ready after {timeout} s:\n{self.read_log()[-3000:]}")

    def read_log(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # the engine core is in the same session: make sure nothing is left behind
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        return self.proc.returncode


class StreamHolder:
    """A streaming completion that holds one of a node's sequence slots until ``release()``.

    It reads raw bytes without parsing SSE lines: on a 2-core machine the test process shares
    the CPU with the node, and every cycle it spends slows the node's answers to the test.
    ``finished`` tells whether the stream ended without ``release()``, so a test can tell "the
    slot was still held" apart from "the request had already ended".
    """

    def __init__(self, node: NodeProcess, model: str, *, max_tokens: int = 900, prompt: str = "hello"):
        self.node, self.model, self.max_tokens, self.prompt = node, model, max_tokens, prompt
        self.status: int | None = None
        self.error: str | None = None
        self.finished_at: float | None = None  # when the stream ended without release(), however it ended
        self.tail = b""
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def _run(self) -> None:
        body = {"model": self.model, "prompt": self.prompt, "max_tokens": self.max_tokens, "stream": True,
                "ignore_eos": True}
        try:
            with httpx.stream("POST", self.node.url + "/v1/completions", headers=self.node.headers, json=body,
                              timeout=120) as r:
                self.status = r.status_code
                for chunk in r.iter_raw():
                    self.tail = (self.tail + chunk)[-300:]
                    if self._release.is_set():
                        return  # leaving the context manager closes the connection: a disconnect
                self.finished_at = time.monotonic()
        except httpx.HTTPError as exc:
            self.error = repr(exc)

    def join(self, timeout: float = 120) -> None:
        """Wait for the stream to end on its own."""
        self._thread.join(timeout)

    def release(self, timeout: float = 60) -> None:
        self._release.set()
        self._thread.join(timeout)


def hold_slots(node: NodeProcess, model: str, count: int, **kw) -> list[StreamHolder]:
    return [StreamHolder(node, model, **kw) for _ in range(count)]
