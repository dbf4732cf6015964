"""Read the deployment files the way Docker and compose do, and the CLI's own vocabulary
(flags, environment variables) to check them against."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import click
import dockerfile
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda", "Dockerfile.spark")
NODE_PORT = 8000
ROUTER_PORT = 8080


def parse_dockerfile(name: str) -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DOCKER / name))


def final_stage(cmds: tuple[dockerfile.Command, ...]) -> list[dockerfile.Command]:
    last = max(i for i, c in enumerate(cmds) if c.cmd == "FROM")
    return list(cmds[last:])


def instructions(cmds, name: str) -> list[dockerfile.Command]:
    return [c for c in cmds if c.cmd == name]


def env_of(cmds) -> dict[str, str]:
    """ENV key=value pairs, in order (the parser gives a flat key, value, key, value tuple)."""
    out: dict[str, str] = {}
    for c in instructions(cmds, "ENV"):
        it = iter(c.value)
        out.update(dict(zip(it, it)))
    return out


def load_compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def command(kind: str) -> click.Command:
    if kind == "node":
        from server.node_cli import serve
        return serve
    from server.router.cli import route
    return route


def envvars(kind: str) -> set[str]:
    names = {p.envvar for p in command(kind).params if isinstance(p, click.Option) and p.envvar}
    return names | ({"EDGEFLEET_CONFIG"} if kind == "node" else set())


@contextmanager
def only_env(env: dict[str, str]):
    """Run with exactly these EDGEFLEET_* variables (the caller's own are hidden)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        yield


def parse_with_env(kind: str, args: list[str], env: dict[str, str]) -> click.Context:
    """Let click resolve flags > environment exactly as at start-up (types, choices,
    booleans), without running the command."""
    with only_env(env):
        return command(kind).make_context(kind, list(args), resilient_parsing=False)
