"""Real processes for router end-to-end tests: sim nodes and routers on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.nodeproc import free_port

EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))



@dataclass
class Proc:
    popen: subprocess.Popen
    url: str
    log: Path
    name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0, status: int = 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {url}:\n{log.read_text()[-3000:]}")


class Launcher:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[Proc] = []

    def _spawn(self, args: list[str], name: str) -> tuple[subprocess.Popen, Path]:
        log = self.tmp / f"{name}.log"
        for n in range(2, 100):  # a restart under the same name keeps the old log
            if not log.exists():
                break
            log = self.tmp / f"{name}.{n}.log"
        fh = open(log, "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        popen = subprocess.Popen([EDGEFLEET, *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
        return popen, log

    def node(self, name: str, model: str = "sim-model", wait: bool = True, extra: list[str] = (),
             port: int | None = None, **opts) -> Proc:
        port = port or free_port()  # a restart passes the old port: the router knows the node by URL
        args = ["serve", "--engine", "sim", "--port", str(port), "--name", name, "--served-model-name", model,
                *extra]
        for k, v in opts.items():
            args += ["--engine-option", f"{k}={json.dumps(v)}"]
        popen, log = self._spawn(args, name)
        proc = Proc(popen, f"http://127.0.0.1:{port}", log, name)
        self.procs.append(proc)
        if wait:
            wait_http(proc.url + "/ready", popen, log)
        return proc

    def router(self, *args: str, name: str = "router", wait_ready: bool = True, port: int | None = None) -> Proc:
        port = port or free_port()
        popen, log = self._spawn(["route", "--port", str(port), *args], name)
        proc = Proc(popen, f"http://127.0.0.1:{port}", log, name)
        self.procs.append(proc)
        wait_http(proc.url + "/health", popen, log)
        if wait_ready:
            wait_http(proc.url + "/ready", popen, log, timeout=20)
        return proc

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Iterator[Launcher]:
    launch = Launcher(tmp_path_factory.mktemp("fleet"))
    yield launch
    launch.close()


def fleet(router: Proc, **headers: str) -> dict:
    return httpx.get(router.url + "/v1/fleet", headers=headers, timeout=5, trust_env=False).json()


def wait_until(pred, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False
