"""docs/deploy.md agrees with the CLI, the images and compose: every variable it names
exists, every `edgefleet` command it shows parses, every value it quotes is the one shipped."""

from __future__ import annotations

import re
import shlex

import click

from server.cli import main
from tests.deploy.helpers import (DOCKER, DOCKERFILES, NODE_PORT, ROOT, ROUTER_PORT, env_of, envvars, final_stage,
                                  parse_dockerfile)

DOC = (ROOT / "docs" / "deploy.md").read_text()
# Variables that are not CLI settings, and the file that must use each.
EXTRAS = {
    "EDGEFLEET_CACHE_DIR": ROOT / "server" / "demo_model.py",
    "EDGEFLEET_GPU_DOCKERFILE": DOCKER / "compose.yaml",
    **{v: ROOT / "scripts" / "install.sh" for v in ("EDGEFLEET_EXTRAS", "EDGEFLEET_EDITABLE", "EDGEFLEET_TORCH_INDEX",
                                                     "EDGEFLEET_FORCE", "EDGEFLEET_INSTALL_DRY_RUN")},
}


def code_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC, re.S)
    return [line.strip() for b in blocks for line in b.replace("\\\n", " ").splitlines()]


def test_every_variable_named_exists() -> None:
    known = envvars("node") | envvars("router") | set(EXTRAS)
    named = set(re.findall(r"\bEDGEFLEET_[A-Z_]+[A-Z]\b", DOC))
    assert named - known == set()
    for var, user in EXTRAS.items():
        assert var in user.read_text(), f"{var} is documented but {user.name} does not use it"


def test_every_compose_knob_is_documented() -> None:
    compose = (DOCKER / "compose.yaml").read_text()
    knobs = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", compose))
    table = DOC.split("These can be set in the shell or in `docker/.env`:")[1].split("\n\n")[1]
    assert knobs == set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))


def _flags_of(name: str) -> set[str]:
    cmd = main.get_command(click.Context(main), name)
    assert cmd is not None and "unavailable" not in (cmd.help or ""), name
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def test_every_edgefleet_command_shown_is_valid() -> None:
    seen = 0
    for line in code_lines():
        line = line.split(" #")[0]
        m = re.match(r"^(?:sudo )?(?:\.venv/bin/)?edgefleet (.*)$", line)
        if not m:
            continue
        words = shlex.split(m.group(1).split("|")[0])
        sub, rest = words[0], words[1:]
        if sub == "install-service":
            own = _flags_of(sub)
            while rest and rest[0].startswith("-"):
                assert rest[0] in own, line
                rest = rest[2:] if rest[0] in ("-o", "--output", "--user", "--environment-file", "--executable",
                                               "--stop-margin") else rest[1:]
            kind, rest = rest[0], rest[1:]
            sub = {"node": "serve", "router": "route"}[kind]
        flags = _flags_of(sub)
        for w in rest:
            if w.startswith("--"):
                assert w.split("=")[0] in flags, f"{line}: {w} is not an `edgefleet {sub}` option"
        seen += 1
    assert seen >= 4


def test_ports_match_the_images() -> None:
    assert f"| node | `edgefleet serve` | {NODE_PORT} |" in DOC
    assert f"| router | `edgefleet route` | {ROUTER_PORT} |" in DOC


def test_image_values_quoted_are_the_shipped_ones() -> None:
    images = {name: env_of(final_stage(parse_dockerfile(name))) for name in DOCKERFILES}
    checked = 0
    for var in sorted(set(re.findall(r"`(EDGEFLEET_[A-Z_]+=[^`\s]+)`", DOC))):
        key, value = var.split("=", 1)
        shipped = {name: env[key] for name, env in images.items() if key in env}
        if shipped:
            assert value in shipped.values(), f"docs say {var}; images ship {shipped}"
            checked += 1
    assert checked >= 5
