"""`edgefleet install-service`: a systemd unit for a node or a router, printed or written to
the one path given, with the flags validated by the real `serve`/`route` commands.

It changes nothing else on the machine: no user is created, no unit enabled; the steps that
need root are printed for the owner to run.

Three invariants:
- no API key in the unit: a key file travels as a systemd credential (``LoadCredential=``,
  read by the manager as root, so the file can stay 0600 root) and everything else sensitive
  belongs in the ``EnvironmentFile=``;
- ``KillMode=mixed``: SIGTERM reaches only the main process, which drains and then shuts
  down its own children (the vLLM engine core); a plain ``control-group`` kill would
  terminate the engine under the drain;
- ``TimeoutStopSec`` = the drain timeout + a margin, so systemd's SIGKILL never cuts a drain
  short.
"""

from __future__ import annotations

import math
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import click

KINDS = ("node", "router")
# After its drain (--shutdown-timeout, default 30 s) the router's uvicorn waits this long for
# open connections (server/router/cli.py: timeout_graceful_shutdown).
ROUTER_GRACE_S = 5.0
ROUTER_DRAIN_S = 30.0
CREDENTIAL = "api_key"
# Options holding a path that is not a click.Path: made absolute too, since the unit does not
# run in the caller's directory.
# (``models``: the node's repeatable --model.)
PATH_OPTIONS = {"model", "models", "audit_log"}


@dataclass(slots=True)
class UnitSpec:
    kind: str
    exec_argv: list[str]  # the edgefleet executable (or python -m server.cli)
    flags: list[str]  # serve/route flags, validated, paths absolute
    api_key_file: str | None  # becomes LoadCredential=
    stop_timeout_s: int
    user: str | None  # None: DynamicUser=yes
    environment_file: str


def _command(kind: str) -> click.Command:
    if kind == "node":
        from server.node_cli import serve
        return serve
    from server.router.cli import route
    return route


@contextmanager
def _without_edgefleet_env():
    """Validate the flags alone: the caller's EDGEFLEET_* variables are not what the service
    will see, so they must neither satisfy nor break the check."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        yield


def _absolute(value: str) -> str:
    return str(Path(value).expanduser().resolve())


def canonical_flags(kind: str, args: list[str]) -> tuple[list[str], str | None, float]:
    """Check ``args`` with the real command and return (flags for ExecStart, the API key file
    or None, the drain timeout in seconds)."""
    cmd = _command(kind)
    if any(a == "--hash-key" for a in args):
        raise click.UsageError("--hash-key is a one-off action, not a service flag")
    if any(a == "--api-key" or a.startswith("--api-key=") for a in args):
        raise click.UsageError("refusing to write an API key into a unit file: use --api-key-file PATH (loaded "
                               "as a systemd credential) or EDGEFLEET_*API_KEY in the environment file")
    with _without_edgefleet_env():
        try:
            ctx = cmd.make_context(f"edgefleet {'serve' if kind == 'node' else 'route'}", list(args))
        except click.ClickException as exc:
            raise click.UsageError(f"invalid {kind} flags: {exc.format_message()}") from None
    by_opt = {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    out: list[str] = []
    key_file = None
    it = iter(args)
    for tok in it:
        name, eq, value = tok.partition("=")
        param = by_opt.get(name)
        if not isinstance(param, click.Option):
            raise click.UsageError(f"unexpected argument {tok!r}")
        if param.is_flag:
            out.append(name)
            continue
        if not eq:
            value = next(it)
        if isinstance(param.type, click.Path) or (param.name in PATH_OPTIONS and value != "-"
                                                   and (value.startswith((".", "~", "/")) or Path(value).exists())):
            value = _absolute(value)
        if param.name == "api_key_file":
            key_file = value
            continue
        out += [name, value]
    drain = ctx.params.get("shutdown_timeout", ROUTER_DRAIN_S)
    if kind == "router":
        drain += ROUTER_GRACE_S
    return out, key_file, float(drain)


def default_executable() -> list[str]:
    """The edgefleet script of the running environment (a venv's bin/), so the service runs
    the same install that wrote it."""
    script = Path(sys.executable).parent / "edgefleet"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "server.cli"]


_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def systemd_quote(arg: str) -> str:
    """One ExecStart word: systemd expands ``%`` specifiers and ``$`` variables, splits on
    whitespace and understands C-style escapes inside double quotes."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and _SAFE.match(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(spec: UnitSpec) -> str:
    what = "inference node" if spec.kind == "node" else "fleet router"
    sub = "serve" if spec.kind == "node" else "route"
    words = [systemd_quote(w) for w in spec.flags]
    if spec.api_key_file:
        words += ["--api-key-file", "${CREDENTIALS_DIRECTORY}/" + CREDENTIAL]
    head = " ".join(systemd_quote(w) for w in (*spec.exec_argv, sub))
    exec_start = " \\\n    ".join([head, *_pairs(words)])
    user = (["DynamicUser=yes"] if spec.user is None
            else [f"User={spec.user}", f"Group={spec.user}"])
    lines = [
        "# Written by `edgefleet install-service`. Flags: edgefleet " + sub + " --help; settings may also come",
        "# from EDGEFLEET_* variables in the EnvironmentFile (flags here win).",
        "[Unit]",
        f"Description=edgefleet {what}",
        "Wants=network-online.target",
        "After=network-online.target",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=exec",
        *user,
        # Created and owned for the service user: the node id and the model caches live here.
        "StateDirectory=edgefleet",
        "CacheDirectory=edgefleet",
        "WorkingDirectory=%S/edgefleet",
        "Environment=HOME=%S/edgefleet XDG_STATE_HOME=%S XDG_CACHE_HOME=%C HF_HOME=%C/edgefleet/huggingface",
        "Environment=PYTHONUNBUFFERED=1",
        f"EnvironmentFile=-{spec.environment_file}",
    ]
    if spec.api_key_file:
        lines.append(f"LoadCredential={CREDENTIAL}:{spec.api_key_file}")
    lines += [
        f"ExecStart={exec_start}",
        "# SIGTERM to the main process only: it drains, then stops its own engine processes.",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={spec.stop_timeout_s}",
        *(["# The router reloads its fleet file and keys, and reopens its audit log, on SIGHUP.",
           "ExecReload=/bin/kill -HUP $MAINPID"] if spec.kind == "router" else []),
        "# A drained stop exits 0 and stays stopped; a crash or a fatal engine error restarts.",
        "Restart=on-failure",
        "RestartSec=5",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=full",
        "ProtectHome=read-only",
        "# No PrivateDevices=: it would hide the GPUs.",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _pairs(words: list[str]) -> list[str]:
    """One flag and its value per continuation line, for a readable unit."""
    out: list[str] = []
    for w in words:
        if out and not w.startswith("--") and out[-1].startswith("--") and " " not in out[-1]:
            out[-1] += " " + w
        else:
            out.append(w)
    return out


def next_steps(spec: UnitSpec, unit_name: str, written: str | None) -> str:
    steps = ["Next steps, as root (install-service changed nothing on this machine):"]
    if spec.user is not None:
        steps.append(f"  useradd --system --user-group --home-dir /var/lib/edgefleet --shell /usr/sbin/nologin "
                     f"{spec.user}")
    steps += [
        f"  install -d -m 0750 {Path(spec.environment_file).parent}   # optional: EDGEFLEET_* settings in "
        f"{spec.environment_file} (mode 0600)",
        (f"  install -m 0644 {written} /etc/systemd/system/{unit_name}" if written else
         f"  save the unit above as /etc/systemd/system/{unit_name} (or rerun with -o PATH)"),
        "  systemctl daemon-reload",
        f"  systemctl enable --now {unit_name}",
        f"  journalctl -u {unit_name} -f",
    ]
    if spec.api_key_file:
        steps.append(f"The key file {spec.api_key_file} is read by systemd as root: keep it mode 0600.")
    return "\n".join(steps)


def _warnings(spec: UnitSpec) -> list[str]:
    out = []
    if spec.api_key_file and not Path(spec.api_key_file).is_file():
        out.append(f"{spec.api_key_file} does not exist yet: the service will not start until it does.")
    if _needs_key_from_env(spec):
        out.append(f"this {spec.kind} binds a non-loopback address with neither --api-key-file nor --insecure: "
                   f"it starts only if {spec.environment_file} sets "
                   f"{'EDGEFLEET_API_KEY' if spec.kind == 'node' else 'EDGEFLEET_ROUTER_API_KEY'}"
                   f"{'' if spec.kind == 'node' else ' (or --fleet has [[keys]])'}.")
    exe = spec.exec_argv[0]
    home = str(Path.home())
    if exe.startswith("/root/") or (home != "/" and exe.startswith(home + "/")):
        out.append(f"{exe} is under a home directory: make sure the service user can read and run it "
                   "(ProtectHome=read-only keeps it readable, not its permissions).")
    return out


def _needs_key_from_env(spec: UnitSpec) -> bool:
    from server.config import is_loopback

    flags = spec.flags
    host = flags[flags.index("--host") + 1] if "--host" in flags else "127.0.0.1"
    return not is_loopback(host) and spec.api_key_file is None and "--insecure" not in flags


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--output", "-o", "output", default="-", show_default=True,
              help="Write the unit here ('-': print it). Nothing else is written.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option("--user", default="edgefleet", show_default=True,
              help="Dedicated system user the service runs as (create it with the printed useradd).")
@click.option("--dynamic-user", is_flag=True, help="DynamicUser=yes instead: systemd allocates a user per start.")
@click.option("--environment-file", default=None,
              help="EnvironmentFile= (optional at start). Default: /etc/edgefleet/<kind>.env.")
@click.option("--executable", default=None, help="edgefleet executable. Default: the one of this install.")
@click.option("--stop-margin", type=float, default=15.0, show_default=True,
              help="Seconds added to the drain timeout for TimeoutStopSec.")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("flags", nargs=-1, type=click.UNPROCESSED)
def install_service(output: str, force: bool, user: str, dynamic_user: bool, environment_file: str | None,
                    executable: str | None, stop_margin: float, kind: str, flags: tuple[str, ...]) -> None:
    """Write a systemd unit for a node or a router; FLAGS are `edgefleet serve` (node) or
    `edgefleet route` (router) flags, after KIND.

    \b
    edgefleet install-service node --host 0.0.0.0 --api-key-file /etc/edgefleet/node.key --model /srv/models/qwen
    edgefleet install-service -o edgefleet-router.service router --fleet /etc/edgefleet/fleet.toml
    """
    args, key_file, drain = canonical_flags(kind, list(flags))
    spec = UnitSpec(
        kind=kind,
        exec_argv=[_absolute(executable)] if executable else default_executable(),
        flags=args, api_key_file=key_file,
        stop_timeout_s=math.ceil(drain + stop_margin),
        user=None if dynamic_user else user,
        environment_file=environment_file or f"/etc/edgefleet/{kind}.env",
    )
    text = render_unit(spec)
    unit_name = f"edgefleet-{kind}.service"
    if output == "-":
        click.echo(text, nl=False)
        written = None
    else:
        path = Path(output)
        if path.exists() and not force:
            raise click.UsageError(f"{path} exists; pass --force to overwrite it")
        try:
            path.write_text(text)
        except OSError as exc:
            raise click.ClickException(f"cannot write {path}: {exc}") from None
        written = str(path.resolve())
        click.echo(f"wrote {written}:\n", err=True)
        click.echo(text, err=True)
    for w in _warnings(spec):
        click.secho("warning: " + w, fg="yellow", err=True)
    click.echo(next_steps(spec, unit_name, written), err=True)
