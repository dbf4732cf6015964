"""compose.yaml: three profiles, each two nodes and a router; every service runs commands,
variables and ports the images and the CLI agree on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from server.router.config import load_fleet
from tests.deploy.helpers import (DOCKER, NODE_PORT, ROUTER_PORT, envvars, final_stage, instructions, load_compose,
                                  parse_dockerfile, parse_with_env)

PROFILES = ("cpu", "gpu", "mdns")
SUBST = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def substitute(value: str) -> str:
    """compose's ${VAR:-default} with nothing set on the host."""
    return SUBST.sub(lambda m: m.group(2) or "", value)


def seconds(text: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"([\d.]+)([hms])", text))


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def services(compose: dict, profile: str) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if profile in s.get("profiles", [])}


def kind_of(svc: dict) -> str:
    return "router" if svc.get("command", ["serve"])[0] == "route" else "node"


def env(svc: dict) -> dict[str, str]:
    return {k: substitute(str(v)) for k, v in svc.get("environment", {}).items()}


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_is_two_nodes_and_a_router(compose: dict, profile: str) -> None:
    svcs = services(compose, profile)
    kinds = sorted(kind_of(s) for s in svcs.values())
    assert kinds == ["node", "node", "router"], svcs.keys()
    for name, svc in svcs.items():
        assert svc.get("profiles") == [profile], f"{name}: one profile, so profiles never collide on ports"


def test_every_service_builds_from_a_dockerfile_that_exists(compose: dict) -> None:
    for name, svc in compose["services"].items():
        build = svc["build"]
        assert (DOCKER / build["context"]).resolve() == DOCKER.parent, name
        dockerfile = substitute(build["dockerfile"])
        assert (DOCKER.parent / dockerfile).is_file(), f"{name}: {dockerfile}"
        assert svc["image"] in ("edgefleet:cpu", "edgefleet:gpu")
        assert ("cpu" in svc["image"]) == dockerfile.endswith(".cpu"), name


def test_gpu_dockerfile_switch_names_real_images(compose: dict) -> None:
    """EDGEFLEET_GPU_DOCKERFILE picks the GPU image; both choices exist."""
    dockerfile = compose["services"]["node-a-gpu"]["build"]["dockerfile"]
    assert "${EDGEFLEET_GPU_DOCKERFILE:-Dockerfile.cuda}" in dockerfile
    for name in ("Dockerfile.cuda", "Dockerfile.spark"):
        assert (DOCKER / name).is_file()


def test_variables_are_settings_the_cli_accepts(compose: dict) -> None:
    fleet_target = {c["target"]: DOCKER / compose["configs"][c["source"]]["file"]
                    for s in compose["services"].values() for c in s.get("configs", [])}
    for name, svc in compose["services"].items():
        kind = kind_of(svc)
        variables = env(svc)
        assert set(variables) <= envvars(kind), f"{name}: unknown {set(variables) - envvars(kind)}"
        args = [str(fleet_target.get(a, a)) for a in svc.get("command", ["serve"])[1:]]
        # the image's own ENV comes first, the service's environment overrides it
        image_env = {k: v for k, v in _image_env(svc).items() if k in envvars(kind)}
        ctx = parse_with_env(kind, args, {**image_env, **variables})
        if kind == "node":
            assert ctx.params["host"] == "0.0.0.0"
            assert ctx.params["models"] == ()  # ${EDGEFLEET_MODEL:-} unset: the demo model (--model is repeatable)
        else:
            assert ctx.params["host"] == "0.0.0.0" and ctx.params["port"] == ROUTER_PORT


def _image_env(svc: dict) -> dict[str, str]:
    from tests.deploy.helpers import env_of

    return env_of(final_stage(parse_dockerfile(Path(substitute(svc["build"]["dockerfile"])).name)))


def test_non_loopback_binds_carry_a_key_or_say_insecure(compose: dict) -> None:
    for name, svc in compose["services"].items():
        variables = env(svc)
        prefix = "EDGEFLEET_ROUTER_" if kind_of(svc) == "router" else "EDGEFLEET_"
        key_file = variables.get(prefix + "API_KEY_FILE")
        assert prefix + "API_KEY" not in variables, f"{name}: a key in plain text"
        if key_file:
            secret = key_file.removeprefix("/run/secrets/")
            assert secret in svc["secrets"] and secret in compose["secrets"], name
        else:
            assert variables.get(prefix + "INSECURE") == "1", name
            assert "mdns" in svc["profiles"], f"{name}: only the mDNS demo runs without node keys"


def test_router_fleet_file_points_at_the_nodes(compose: dict) -> None:
    fleet = load_fleet(DOCKER / compose["configs"]["fleet"]["file"])
    urls = {n.url for n in fleet.nodes}
    assert urls == {f"http://node-a:{NODE_PORT}", f"http://node-b:{NODE_PORT}"}
    assert {n.api_key_file for n in fleet.nodes} == {"/run/secrets/node_key"}
    for profile in ("cpu", "gpu"):
        svcs = services(compose, profile)
        names = set()
        for name, svc in svcs.items():
            if kind_of(svc) == "node":
                names |= {name, *svc.get("networks", {}).get("default", {}).get("aliases", [])}
                assert env(svc)["EDGEFLEET_PORT"] == str(NODE_PORT)
        assert {"node-a", "node-b"} <= names, f"{profile}: the fleet file's hosts resolve"
        (router,) = [s for s in svcs.values() if kind_of(s) == "router"]
        assert router["command"] == ["route", "--fleet", "/etc/edgefleet/fleet.toml"]
        assert router["ports"] == [f"${{ROUTER_PORT:-{ROUTER_PORT}}}:{ROUTER_PORT}"]
        assert "node_key" in router["secrets"]


def test_gpu_nodes_reserve_one_gpu_each(compose: dict) -> None:
    ids = []
    for name, svc in services(compose, "gpu").items():
        if kind_of(svc) != "node":
            assert "deploy" not in svc
            continue
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        ids.append(substitute(device["device_ids"][0]))
    assert sorted(ids) == ["0", "1"]
    for name, svc in services(compose, "cpu").items():
        assert "deploy" not in svc, f"{name}: the CPU profile runs anywhere"


def test_mdns_profile_uses_host_networking_and_discovery(compose: dict) -> None:
    svcs = services(compose, "mdns")
    ports = []
    for name, svc in svcs.items():
        assert svc["network_mode"] == "host", name
        assert "ports" not in svc, f"{name}: published ports mean nothing on the host network"
        if kind_of(svc) == "node":
            assert env(svc)["EDGEFLEET_ADVERTISE"] == "1"
            ports.append(env(svc)["EDGEFLEET_PORT"])
        else:
            # Discovered nodes must prove the node key before the router admits them (G1).
            assert svc["command"] == ["route", "--discover", "--discovered-node-key-file", "/run/secrets/node_key"]
            assert "node_key" in svc["secrets"]
    assert len(set(ports)) == 2, "two nodes on one host network need two ports"


def test_stop_grace_covers_the_drain(compose: dict) -> None:
    for name, svc in compose["services"].items():
        assert svc["init"] is True, f"{name}: an init as PID 1 forwards SIGTERM to edgefleet and reaps children"
        if kind_of(svc) == "node":
            drain = float(env(svc)["EDGEFLEET_SHUTDOWN_TIMEOUT"])
            assert seconds(svc["stop_grace_period"]) >= drain + 10, name
        else:
            assert seconds(svc["stop_grace_period"]) >= 30 + 5 + 10, name  # the router drain (30 s) + uvicorn graceful


def test_router_healthcheck_reads_the_router_port(compose: dict) -> None:
    for name, svc in compose["services"].items():
        if kind_of(svc) != "router":
            continue
        test = svc["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        assert "/ready" in test[3] and "EDGEFLEET_ROUTER_PORT" in test[3] and f"'{ROUTER_PORT}'" in test[3]


def test_named_volumes_and_state_per_node(compose: dict) -> None:
    for profile in PROFILES:
        states = []
        for name, svc in services(compose, profile).items():
            if kind_of(svc) != "node":
                continue
            mounts = dict(v.split(":")[::-1] for v in svc["volumes"])
            assert mounts["/models"] == "models"
            states.append(mounts["/state"])
            for vol in mounts.values():
                assert vol in compose["volumes"]
        assert len(set(states)) == 2, f"{profile}: each node keeps its own node id"


@pytest.mark.skipif(shutil.which("docker") is None
                    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
                    reason="no docker compose CLI on this machine")
@pytest.mark.parametrize("profile", PROFILES)
def test_docker_compose_config_accepts_it(profile: str, tmp_path: Path) -> None:
    r = subprocess.run(["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "--profile", profile, "config", "-q"],
                       capture_output=True, text=True, cwd=DOCKER)
    assert r.returncode == 0, r.stderr
