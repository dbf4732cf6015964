"""The images' HEALTHCHECK and compose's router healthcheck, run for real against a node
and a router started with the images' own environment (simulated engine: no model)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.helpers import env_of, final_stage, instructions, load_compose, parse_dockerfile
from tests.nodeproc import VENV_BIN, free_port

KEY = "deploy-test-key-0123456789"


def image_healthcheck(name: str = "Dockerfile.cpu") -> list[str]:
    (hc,) = instructions(final_stage(parse_dockerfile(name)), "HEALTHCHECK")
    argv = list(hc.value[1:])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def probe(argv: list[str], env: dict[str, str]) -> int:
    return subprocess.run(argv, env={**os.environ, **env}, capture_output=True, timeout=10).returncode


def wait_probe(argv: list[str], env: dict[str, str], proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "process exited"
        if probe(argv, env) == 0:
            return
        time.sleep(0.3)
    raise TimeoutError("healthcheck never passed")


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    return subprocess.Popen(argv, env={**clean, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
    return proc.returncode


def test_image_and_router_healthchecks_track_readiness(tmp_path: Path) -> None:
    compose = load_compose()
    stage = final_stage(parse_dockerfile("Dockerfile.cpu"))
    (entry,), (cmd,) = instructions(stage, "ENTRYPOINT"), instructions(stage, "CMD")
    node_port, router_port = free_port(), free_port()
    # The image's environment, but on loopback, a free port, temp dirs and the sim engine.
    node_env = {**{k: v for k, v in env_of(stage).items() if k.startswith("EDGEFLEET_")},
                "EDGEFLEET_HOST": "127.0.0.1", "EDGEFLEET_PORT": str(node_port), "EDGEFLEET_ENGINE": "sim",
                "EDGEFLEET_STATE_DIR": str(tmp_path / "state"), "EDGEFLEET_CACHE_DIR": str(tmp_path / "cache"),
                "EDGEFLEET_API_KEY": KEY}
    check = image_healthcheck()
    port_env = {"EDGEFLEET_PORT": str(node_port)}
    assert probe(check, port_env) != 0, "nothing listens yet: unhealthy"

    node = start([str(VENV_BIN / entry.value[0]), *cmd.value], node_env, tmp_path / "node.log")
    router = None
    try:
        wait_probe(check, port_env, node)
        # compose's router, with its fleet file's shape: the node key from a file
        key_file = tmp_path / "node_key"
        key_file.write_text(KEY)
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(f'[[nodes]]\nurl = "http://127.0.0.1:{node_port}"\napi_key_file = "{key_file}"\n')
        svc = compose["services"]["router"]
        router_env = {**{k: str(v) for k, v in svc["environment"].items()},
                      "EDGEFLEET_ROUTER_HOST": "127.0.0.1", "EDGEFLEET_ROUTER_PORT": str(router_port),
                      "EDGEFLEET_ROUTER_API_KEY_FILE": str(key_file)}
        args = [str(fleet) if a == "/etc/edgefleet/fleet.toml" else a for a in svc["command"]]
        router = start([str(VENV_BIN / "edgefleet"), *args], router_env, tmp_path / "router.log")
        router_check = [sys.executable, *svc["healthcheck"]["test"][2:]]
        wait_probe(router_check, {"EDGEFLEET_ROUTER_PORT": str(router_port)}, router)
    finally:
        # Stop both before asserting anything, so a failure never leaves a process behind.
        router_rc = stop(router, 15) if router is not None else 0
        t0 = time.monotonic()
        node_rc = stop(node, 45)
        node_stop_s = time.monotonic() - t0
    # uvicorn re-raises SIGTERM after its graceful shutdown; systemd counts death by SIGTERM
    # as a clean exit (no restart), docker reports 143.
    assert router_rc in (0, -signal.SIGTERM), (tmp_path / "router.log").read_text()[-2000:]
    # SIGTERM drains and exits 0, well inside compose's stop_grace_period
    assert node_rc == 0, (tmp_path / "node.log").read_text()[-2000:]
    assert node_stop_s < 30
    assert probe(check, port_env) != 0, "stopped: unhealthy again"


@pytest.mark.parametrize("name", ["Dockerfile.cuda", "Dockerfile.spark"])
def test_all_images_share_one_healthcheck(name: str) -> None:
    assert image_healthcheck(name) == image_healthcheck("Dockerfile.cpu")
