"""Packaging: the console script, pinned dependencies, and the `kernels` name clash."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_hf_kernels_not_detected_because_of_our_package():
    # Hugging Face's `kernels` distribution shares our import name; transformers must not
    # believe it is installed just because edgefleet is.
    code = "import transformers.utils.import_utils as u; print(u.is_kernels_available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "False"


def test_dependencies_are_pinned():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"] + [d for extra in meta["optional-dependencies"].values() for d in extra]
    unpinned = [d for d in deps if "==" not in d]
    assert not unpinned, unpinned
    assert meta["scripts"]["edgefleet"] == "server.cli:main"


def test_cli_lists_every_subcommand_and_serve_help_is_complete():
    exe = Path(sys.executable).parent / "edgefleet"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("serve", "capacity", "plan", "route", "fleet", "mcp", "bench", "install-service"):
        assert cmd in out
    assert "unavailable" not in out, out
    serve = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--engine", "--dtype", "--quantization", "--max-model-len", "--host", "--port",
                 "--api-key", "--name", "--zone", "--max-queued-requests", "--max-queue-wait", "--shutdown-timeout",
                 "--insecure", "--advertise", "EDGEFLEET_PORT"):
        assert flag in serve, flag


def test_non_loopback_bind_without_key_is_refused():
    exe = Path(sys.executable).parent / "edgefleet"
    r = subprocess.run([str(exe), "serve", "--host", "0.0.0.0", "--port", "1"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "without an API key" in r.stderr


def test_insecure_non_loopback_bind_prints_a_banner(tmp_path):
    from tests.nodeproc import free_port

    exe = Path(sys.executable).parent / "edgefleet"
    proc = subprocess.Popen([str(exe), "serve", "--engine", "sim", "--host", "0.0.0.0", "--port", str(free_port()),
                             "--insecure", "--state-dir", str(tmp_path)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        seen = ""
        for line in proc.stderr:
            seen += line
            if "INSECURE" in seen and "NO API key" in seen:
                break
        assert "INSECURE" in seen and "NO API key" in seen
    finally:
        proc.kill()
        proc.wait(10)
