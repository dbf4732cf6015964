"""scripts/install.sh, the one CPU setup (README, CI, Dockerfile.cpu), driven with a stand-in
interpreter that records what it is asked to do: the real install (minutes, 1.5 GB) is not
repeated here."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from tests.deploy.helpers import ROOT

SCRIPT = ROOT / "scripts" / "install.sh"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv whose python only logs its arguments."""
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n')
    py.chmod(0o755)
    return venv, log


def install(venv: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env = {"EDGEFLEET_FETCH_MODEL": "0", **env}  # the model pre-fetch has its own test
    return subprocess.run(["bash", str(SCRIPT)], env={**base, "VENV": str(venv), "EDGEFLEET_TORCH_INDEX": "", **env},
                          capture_output=True, text=True, timeout=60)


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_script_is_valid_bash_and_executable() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    assert SCRIPT.stat().st_mode & stat.S_IXUSR


@pytest.mark.skipif(shutil.which("shellcheck") is None and not (VENV_BIN / "shellcheck").exists(),
                    reason="shellcheck not installed (the test extra brings it)")
def test_shellcheck_passes() -> None:
    exe = shutil.which("shellcheck") or str(VENV_BIN / "shellcheck")
    r = subprocess.run([exe, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def test_installs_in_order_then_skips_until_something_changes(fake_venv: tuple[Path, Path]) -> None:
    venv, log = fake_venv
    r = install(venv)
    assert r.returncode == 0, r.stderr
    assert calls(log) == [
        "-m pip install --upgrade pip",
        "-m pip install torch==2.13.0",
        f"-m pip install -e {ROOT}[cpu,test]",
        "-m pip uninstall -y torchvision torchaudio torchcodec",
        "-c import torch, vllm, server; print('torch', torch.__version__, '| vllm', vllm.__version__)",
    ]
    # Second run: nothing to do, and quick.
    log.unlink()
    r = install(venv)
    assert r.returncode == 0 and "up to date" in r.stderr
    assert calls(log) == []
    # Another set of extras is another install.
    r = install(venv, EDGEFLEET_EXTRAS="cpu", EDGEFLEET_EDITABLE="0")
    assert r.returncode == 0
    assert f"-m pip install {ROOT}[cpu]" in calls(log)
    log.unlink()
    assert "up to date" in install(venv, EDGEFLEET_EXTRAS="cpu", EDGEFLEET_EDITABLE="0").stderr
    # EDGEFLEET_FORCE runs every step again.
    assert install(venv, EDGEFLEET_EXTRAS="cpu", EDGEFLEET_EDITABLE="0", EDGEFLEET_FORCE="1").returncode == 0
    assert len(calls(log)) == 5


def test_default_model_prefetched_every_run_and_a_failure_is_only_a_note(fake_venv: tuple[Path, Path]) -> None:
    venv, log = fake_venv
    r = install(venv, EDGEFLEET_FETCH_MODEL="1")
    assert r.returncode == 0, r.stderr
    assert calls(log)[-1] == "-m server.model_cache"
    log.unlink()
    py = venv / "bin" / "python"  # offline now: the fetch fails, the install does not
    py.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\ncase "$*" in *model_cache*) exit 1;; esac\n')
    r = install(venv, EDGEFLEET_FETCH_MODEL="1")
    assert r.returncode == 0 and "up to date" in r.stderr
    assert calls(log) == ["-m server.model_cache"]
    assert "default model was not fetched" in r.stderr


def test_a_failing_step_leaves_no_stamp(fake_venv: tuple[Path, Path]) -> None:
    venv, log = fake_venv
    py = venv / "bin" / "python"
    py.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\ncase "$*" in *torch==*) exit 1;; esac\n')
    r = install(venv)
    assert r.returncode != 0
    assert calls(log)[-1] == "-m pip install torch==2.13.0"  # stopped there (set -e)
    assert not (venv / ".edgefleet-install").exists()


class _Index(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("status", [200, 405])  # an index that refuses HEAD still answered
def test_torch_index_used_when_reachable_skipped_when_not(fake_venv: tuple[Path, Path], status: int) -> None:
    venv, log = fake_venv
    handler = type("Index", (_Index,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    try:
        r = install(venv, EDGEFLEET_TORCH_INDEX=url)
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 0, r.stderr
    pip_installs = [c for c in calls(log) if c.startswith("-m pip install") and "--upgrade" not in c]
    assert len(pip_installs) == 2 and all(f"--extra-index-url {url}" in c for c in pip_installs)

    # Nothing listens there now: a note, and pip's own sources (a local wheel dir) do the work.
    log.unlink()
    r = install(venv, EDGEFLEET_TORCH_INDEX=url, EDGEFLEET_FORCE="1")
    assert r.returncode == 0
    assert "unreachable" in r.stderr
    assert not any("--extra-index-url" in c for c in calls(log))


def test_dry_run_creates_nothing(tmp_path: Path) -> None:
    venv = tmp_path / "new-venv"
    r = install(venv, EDGEFLEET_INSTALL_DRY_RUN="1")
    assert r.returncode == 0
    assert re.search(rf"^\+ python3 -m venv {re.escape(str(venv))}$", r.stderr, re.M)
    assert "+ " + str(venv / "bin" / "python") + " -m pip uninstall -y torchvision torchaudio torchcodec" in r.stderr
    assert not venv.exists()


def test_torch_pin_matches_the_cpu_extra() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cpu"]
    (torch_pin,) = [d for d in extra if d.startswith("torch==")]
    assert f'TORCH_VERSION={torch_pin.removeprefix("torch==")}\n' in SCRIPT.read_text()
