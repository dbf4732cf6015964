"""`edgefleet install-service`: a valid unit with the flags given, the drain wired to
TimeoutStopSec, no key in the text, and nothing written but the one path asked for."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from server.cli import main
from server.deploy import systemd_quote
from tests.deploy.helpers import parse_with_env

SECRET = "sk-do-not-embed-0123456789"


def run(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(main, ["install-service", *args], env=env)
    return result


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's format: sections, repeatable keys, backslash continuation lines."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    logical = text.replace("\\\n", " ")
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not key=value: {line!r}"
        current.setdefault(key, []).append(value)
    return sections


def exec_argv(unit: dict, credentials: Path) -> list[str]:
    """ExecStart as the argv systemd would run (specifiers and the credentials dir resolved)."""
    (line,) = unit["Service"]["ExecStart"]
    line = line.replace("${CREDENTIALS_DIRECTORY}", str(credentials))
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line)]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "node.key"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def test_node_unit_carries_flags_drain_and_credential(key_file: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "m").mkdir(parents=True)
    r = run("node", "--host", "0.0.0.0", "--api-key-file", str(key_file), "--model", "models/m",
            "--label", "room=garage attic", "--shutdown-timeout", "42.5", "--kv-cache-gb", "2")
    assert r.exit_code == 0, r.output
    unit = parse_unit(r.stdout)
    svc = unit["Service"]
    assert svc["KillMode"] == ["mixed"] and svc["KillSignal"] == ["SIGTERM"]
    assert svc["TimeoutStopSec"] == ["58"]  # ceil(42.5 + 15)
    assert svc["Restart"] == ["on-failure"]
    assert svc["User"] == ["edgefleet"] and svc["Group"] == ["edgefleet"]
    assert svc["LoadCredential"] == [f"api_key:{key_file}"]
    assert svc["EnvironmentFile"] == ["-/etc/edgefleet/node.env"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    argv = exec_argv(unit, tmp_path / "creds")
    assert Path(argv[0]).name == "edgefleet" and Path(argv[0]).is_absolute() and argv[1] == "serve"
    assert argv[argv.index("--model") + 1] == str(tmp_path / "models" / "m")  # relative paths made absolute
    assert argv[argv.index("--label") + 1] == "room=garage attic"
    assert argv[argv.index("--api-key-file") + 1] == str(tmp_path / "creds" / "api_key")
    # The command line is one the real `serve` accepts, with the same meaning.
    ctx = parse_with_env("node", argv[2:], {})
    assert ctx.params["shutdown_timeout"] == 42.5 and ctx.params["kv_cache_gb"] == 2.0
    assert ctx.params["labels"] == ("room=garage attic",)
    assert SECRET not in r.output


def test_router_unit_uses_the_router_drain(key_file: Path, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[nodes]]\nurl = "http://10.0.0.5:8000"\n')
    r = run("--dynamic-user", "router", "--host", "0.0.0.0", "--fleet", str(fleet),
            "--api-key-file", str(key_file), "--policy", "least_loaded")
    assert r.exit_code == 0, r.output
    unit = parse_unit(r.stdout)
    svc = unit["Service"]
    assert svc["TimeoutStopSec"] == ["50"]  # the router's 30 s drain + uvicorn's 5 s graceful window + 15
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert svc["DynamicUser"] == ["yes"] and "User" not in svc
    assert svc["EnvironmentFile"] == ["-/etc/edgefleet/router.env"]
    argv = exec_argv(unit, tmp_path)
    assert argv[1] == "route" and argv[argv.index("--fleet") + 1] == str(fleet)
    ctx = parse_with_env("router", argv[2:], {})
    assert ctx.params["policy"] == "least_loaded"
    assert "useradd" not in r.output  # a dynamic user needs none


@pytest.mark.parametrize("args", [["--api-key", SECRET], [f"--api-key={SECRET}"]])
def test_refuses_a_plaintext_key(args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "edgefleet-node.service"
    r = run("-o", str(out), "node", "--host", "0.0.0.0", *args)
    assert r.exit_code == 2
    assert "--api-key-file" in r.output and SECRET not in r.output
    assert not out.exists()


@pytest.mark.parametrize("kind,args,msg", [
    ("node", ["--port", "eighty"], "eighty"),
    ("node", ["--engine", "tensorrt"], "tensorrt"),
    ("node", ["--no-such-flag"], "no-such-flag"),
    ("router", ["--policy", "fastest"], "fastest"),
    ("router", ["--hash-key"], "--hash-key"),
])
def test_invalid_flags_are_refused_by_the_real_command(kind: str, args: list[str], msg: str) -> None:
    r = run(kind, *args)
    assert r.exit_code == 2 and msg in r.output


def test_warns_when_only_the_environment_file_can_supply_the_key() -> None:
    r = run("node", "--host", "0.0.0.0")
    assert r.exit_code == 0
    assert "EDGEFLEET_API_KEY" in r.stderr and "/etc/edgefleet/node.env" in r.stderr
    for args in (["--host", "127.0.0.1"], ["--host", "0.0.0.0", "--insecure"]):
        assert "EDGEFLEET_API_KEY" not in run("node", *args).stderr


def test_callers_environment_is_neither_checked_nor_captured() -> None:
    r = run("node", "--port", "9001", env={"EDGEFLEET_PORT": "not-a-port", "EDGEFLEET_API_KEY": SECRET})
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output and "not-a-port" not in r.output
    assert "--port 9001" in r.stdout


def test_writes_only_the_output_path_and_never_overwrites(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "edgefleet-node.service"
    r = run("-o", str(out), "node", "--port", "8001")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert r.stdout == "" and out.read_text() in r.stderr  # prints what it wrote
    assert "systemctl enable --now edgefleet-node.service" in r.stderr
    first = out.read_text()
    r = run("-o", str(out), "node", "--port", "8002")
    assert r.exit_code == 2 and "--force" in r.output and out.read_text() == first
    r = run("-o", str(out), "--force", "node", "--port", "8002")
    assert r.exit_code == 0 and "--port 8002" in out.read_text()


def test_quoting_survives_systemd_specials() -> None:
    assert systemd_quote("plain/path-1.0") == "plain/path-1.0"
    assert systemd_quote("50%") == "50%%"
    assert systemd_quote("$HOME") == '"$$HOME"'
    assert systemd_quote('a "b" c') == '"a \\"b\\" c"'
    assert systemd_quote("") == '""'


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("kind", ["node", "router"])
def test_systemd_analyze_verify_accepts_the_unit(kind: str, key_file: Path, tmp_path: Path) -> None:
    out = tmp_path / f"edgefleet-{kind}.service"
    args = ["--host", "0.0.0.0", "--api-key-file", str(key_file), "--allowed-origin", "http://a b",
            "--log-level", "info"]
    r = run("-o", str(out), kind, *args)
    assert r.exit_code == 0, r.output
    v = subprocess.run(["systemd-analyze", "verify", str(out)], capture_output=True, text=True, timeout=60)
    # verify prints every ignored or unparsable line and returns 0 for many of them: both count
    assert v.returncode == 0 and v.stdout.strip() == "" and str(out) not in v.stderr, v.stderr
