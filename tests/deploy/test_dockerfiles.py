"""Every image parses as Docker would parse it, and everything it runs exists in the CLI.
No Docker engine runs here, so nothing is built: these checks are what can fail without one."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from server.cli import main

VENV_BIN = Path(sys.executable).parent
from tests.deploy.helpers import (DOCKER, DOCKERFILES, NODE_PORT, ROOT, env_of, envvars, final_stage, instructions,
                                  parse_dockerfile, parse_with_env)


@pytest.fixture(params=DOCKERFILES)
def image(request: pytest.FixtureRequest):
    return request.param, parse_dockerfile(request.param)


def test_multi_stage_with_a_lean_runtime_stage(image) -> None:
    name, cmds = image
    froms = instructions(cmds, "FROM")
    assert len(froms) >= 2, f"{name}: build and runtime stages"
    # The runtime stage copies the virtualenv out of the build stage, not the sources.
    copies = instructions(final_stage(cmds), "COPY")
    assert [c.flags for c in copies] == [("--from=build",)], name
    assert copies[0].value == ("/opt/edgefleet", "/opt/edgefleet")


def test_runs_as_a_non_root_user_with_volumes(image) -> None:
    name, cmds = image
    stage = final_stage(cmds)
    users = instructions(stage, "USER")
    uid = users[-1].value[0].split(":")[0]
    assert uid.isdigit() and uid != "0", f"{name}: numeric, so runAsNonRoot-style checks can verify it"
    # the user is created in this stage with that uid, before it is switched to
    assert any("useradd" in " ".join(c.value) and f"--uid {uid} " in " ".join(c.value)
               for c in instructions(stage, "RUN"))
    volumes = {v for c in instructions(stage, "VOLUME") for v in (json.loads(c.original.split(None, 1)[1])
                                                                  if c.json else c.value)}
    assert {"/models", "/state"} <= volumes, name
    env = env_of(stage)
    assert env["HF_HOME"].startswith("/models/") and env["EDGEFLEET_CACHE_DIR"].startswith("/models/")
    assert env["EDGEFLEET_STATE_DIR"] == "/state"


def test_entrypoint_and_cmd_are_real_commands(image) -> None:
    name, cmds = image
    stage = final_stage(cmds)
    (entry,) = instructions(stage, "ENTRYPOINT")
    (cmd,) = instructions(stage, "CMD")
    assert entry.json and cmd.json, "exec form, so SIGTERM reaches edgefleet itself (PID 1), not a shell"
    assert entry.value == ("edgefleet",)
    result = CliRunner().invoke(main, [*cmd.value, "--help"])
    assert result.exit_code == 0, result.output
    assert "Run an inference node" in result.output
    assert instructions(stage, "STOPSIGNAL")[0].value == ("SIGTERM",)


def test_environment_is_edgefleet_settings_the_cli_accepts(image) -> None:
    name, cmds = image
    env = {k: v for k, v in env_of(final_stage(cmds)).items() if k.startswith("EDGEFLEET_")}
    known = envvars("node") | {"EDGEFLEET_CACHE_DIR"}  # the demo model's cache (server/demo_model.py)
    assert set(env) <= known, f"{name}: unknown {set(env) - known}"
    ctx = parse_with_env("node", [], {k: v for k, v in env.items() if k != "EDGEFLEET_CACHE_DIR"})
    assert ctx.params["host"] == "0.0.0.0" and ctx.params["port"] == NODE_PORT
    assert ctx.params["engine"] == "vllm"
    assert ctx.params["shutdown_timeout"] == 30.0
    if name == "Dockerfile.cpu":
        assert ctx.params["enforce_eager"] is True  # no compiler in the CPU image
    else:
        assert not ctx.params["enforce_eager"]  # CUDA graphs on GPUs (unset or off)
        assert 0 < ctx.params["gpu_memory_utilization"] <= 0.85


def test_port_and_healthcheck_agree(image) -> None:
    name, cmds = image
    stage = final_stage(cmds)
    assert instructions(stage, "EXPOSE")[0].value == (str(NODE_PORT),)
    (hc,) = instructions(stage, "HEALTHCHECK")
    assert hc.json and hc.value[0] == "CMD"
    argv = list(hc.value[1:])
    assert argv[:2] == ["python", "-c"], "python is in every image; curl is not"
    assert "/ready" in argv[2] and "EDGEFLEET_PORT" in argv[2] and f"'{NODE_PORT}'" in argv[2]
    flags = dict(f.lstrip("-").split("=", 1) for f in hc.flags)
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)
    # A model load may take minutes: failures then must not count.
    assert int(flags["start-period"].rstrip("s")) >= 300


def test_copied_sources_exist_and_are_in_the_build_context(image) -> None:
    name, cmds = image
    ignore = (DOCKER / f"{name}.dockerignore").read_text().split("\n")
    patterns = [p for p in ignore if p and not p.startswith("#")]
    for c in instructions(cmds, "COPY"):
        if c.flags:
            continue
        for src in c.value[:-1]:
            if "*" in src:  # optional by design (README.md*): it only adds package metadata
                assert src.rstrip("*") in {"README.md"}, src
            else:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: not in the repository"
            included = False  # .dockerignore semantics: the last matching pattern wins
            for p in patterns:
                neg = p.startswith("!")
                if fnmatch.fnmatch(src.rstrip("*"), p.lstrip("!")):
                    included = neg
            assert included, f"{name}: COPY {src} is excluded by {name}.dockerignore"


@pytest.mark.skipif(shutil.which("hadolint") is None and not (VENV_BIN / "hadolint").exists(),
                    reason="hadolint not installed (the test extra brings it)")
def test_hadolint_passes(image) -> None:
    """Docker's best-practice linter, shellcheck on RUN lines included. Ignored on purpose:
    DL3008 (apt versions: the base image tag pins the distribution) and DL3029 (the Spark
    image is arm64 by definition)."""
    name, _ = image
    exe = shutil.which("hadolint") or str(VENV_BIN / "hadolint")
    r = subprocess.run([exe, "--no-color", "--ignore", "DL3008", "--ignore", "DL3029", str(DOCKER / name)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout


def test_cpu_image_installs_with_the_shared_script() -> None:
    cmds = parse_dockerfile("Dockerfile.cpu")
    runs = [" ".join(c.value) for c in instructions(cmds, "RUN")]
    (install,) = [r for r in runs if "scripts/install.sh" in r]
    assert re.search(r"\bbash scripts/install\.sh$", install)
    assert "EDGEFLEET_EXTRAS=cpu" in install and "EDGEFLEET_EDITABLE=0" in install
    assert "VENV=/opt/edgefleet" in install
    copies = [c.value for c in instructions(cmds, "COPY")]
    assert ("scripts/install.sh", "./scripts/install.sh") in copies
    # no second, diverging pip install of its own
    assert not any("pip install" in r for r in runs)


def test_readme_uses_the_same_install_script() -> None:
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md not written yet")
    assert "scripts/install.sh" in readme.read_text()


def test_spark_image_targets_arm64_and_cuda_13() -> None:
    text = (DOCKER / "Dockerfile.spark").read_text()
    cmds = parse_dockerfile("Dockerfile.spark")
    froms = instructions(cmds, "FROM")
    assert all(f.flags == ("--platform=linux/arm64",) for f in froms)
    args = {c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1] for c in instructions(cmds, "ARG")
            if "=" in c.value[0]}
    assert re.search(r"cuda:13\.\d+\.\d+-", args["CUDA_IMAGE"])
    assert args["TORCH_INDEX"].endswith("/cu130")
    assert "+cu130" in args["VLLM_WHEEL"] and args["VLLM_WHEEL"].endswith("_aarch64.whl")
    assert "0.32.0" in args["VLLM_WHEEL"]  # the vLLM release pinned by the `gpu` extra
    assert "sm_121" in text and "12.1" in text  # the compute capability is documented
