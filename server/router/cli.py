"""`edgefleet route`, `edgefleet fleet`, `edgefleet mcp`."""

from __future__ import annotations

import gc
import json
import logging
import sys
from typing import Any

import click

from server.config import is_loopback
from server.router.persist import store_options, store_settings
from server.transport import limits_from, tls_from, transport_options

log = logging.getLogger("edgefleet.router")


def opt(*names: str, **kw: Any):
    long = next(n for n in names if n.startswith("--")).split("/")[0]  # "--x/--no-x" -> "--x"
    kw.setdefault("show_envvar", True)
    return click.option(*names, envvar="EDGEFLEET_ROUTER_" + long[2:].upper().replace("-", "_"), **kw)


def _hash_key(ctx: click.Context, _p: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from server.edge.security import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        raise click.UsageError("pipe the key on stdin: printf %s \"$KEY\" | edgefleet route --hash-key")
    click.echo(hash_key(key))
    ctx.exit(0)


@click.command()
@click.option("--hash-key", is_flag=True, expose_value=False, is_eager=True, callback=_hash_key,
              help="Read a client key on stdin, print its sha256 hash for the fleet file, exit.")
@opt("--node", "nodes", multiple=True, help="Node base URL (repeatable), e.g. http://10.0.0.5:8000.")
@opt("--fleet", "fleet_file", type=click.Path(exists=True, dir_okay=False), default=None,
     help="Fleet TOML: [[nodes]] (url, api_key/api_key_env/api_key_file, zone, labels), [[keys]], [router].")
@opt("--discover/--no-discover", default=None,
     help="Browse mDNS for nodes started with --advertise. Default: on when no node is given.")
@opt("--discover-interface", "discover_interfaces", multiple=True, help="Interface address for mDNS (repeatable).")
@opt("--discovered-node-key-file", type=click.Path(dir_okay=False), default=None,
     help="File with the key the router presents to nodes found over mDNS (nodes that share one --api-key).")
@opt("--discovery-allow-network", "discovery_allow_networks", multiple=True,
     help="CIDR that discovered nodes may be in (repeatable). Default: any but loopback and link-local. Without "
     "--discovered-node-key-file only nodes in these networks are admitted.")
@opt("--host", default="127.0.0.1", show_default=True, help="Bind address. Non-loopback needs a key or --insecure.")
@opt("--port", type=int, default=8080, show_default=True)
@opt("--api-key", default=None, help="A client key the router accepts (id 'default'); more in the fleet file.")
@opt("--api-key-file", type=click.Path(dir_okay=False), default=None, help="Read that client key from a file.")
@opt("--admin-key", default=None, help="A client key (id 'admin') that also sees fleet internals: /v1/fleet, "
     "node URLs, /metrics, every key's usage.")
@opt("--admin-key-file", type=click.Path(dir_okay=False), default=None, help="Read the admin key from a file.")
@opt("--shutdown-timeout", type=float, default=30.0, show_default=True,
     help="On SIGTERM, seconds in-flight requests may finish before they are ended in band.")
@opt("--insecure", is_flag=True, default=False, help="Allow a non-loopback bind without client keys.")
@opt("--policy", type=click.Choice(["nearest_idle", "cache_blind", "cache_aware", "session_sticky",
                                           "round_robin", "random", "least_loaded"]), default=None,
     help="Routing policy. [default: nearest_idle]")
@opt("--poll-interval", type=float, default=None, help="Seconds between capacity polls. [default: 1.0]")
@opt("--max-attempts", type=int, default=3, show_default=True, help="Nodes tried before the first byte.")
@opt("--connect-timeout", type=float, default=1.0, show_default=True)
@opt("--first-byte-timeout", type=float, default=10.0, show_default=True,
     help="Seconds to wait for a node's response headers before failing over; raised per request to "
     "--first-byte-ttft-factor x the node's predicted TTFT (a long prefill is not a failure).")
@opt("--first-byte-ttft-factor", type=click.FloatRange(min=1.0), default=3.0, show_default=True,
     help="k in: first-byte deadline = max(--first-byte-timeout, k x predicted TTFT).")
@opt("--total-deadline", type=float, default=30.0, show_default=True, help="Budget for all attempts.")
@opt("--read-timeout", type=float, default=300.0, show_default=True, help="Max gap between chunks once streaming.")
@opt("--failure-threshold", type=int, default=3, show_default=True, help="Failures that open a node's breaker.")
@opt("--success-threshold", type=int, default=2, show_default=True, help="Half-open successes that close it.")
@opt("--open-seconds", type=float, default=2.0, show_default=True, help="Time open before half-open probing.")
@opt("--audit-log", default=None, help="Append JSON lines per request to this file ('-': stderr).")
@opt("--log-prompts", is_flag=True, default=False, help="Include prompt text in the audit log.")
@opt("--allowed-host", "allowed_hosts", multiple=True, help="Extra Host header values accepted.")
@opt("--allowed-origin", "allowed_origins", multiple=True, help="Extra browser Origins accepted.")
@opt("--max-body-bytes", type=int, default=4 << 20, show_default=True)
@opt("--node-ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
     help="PEM CA bundle that https:// node certificates are checked against (self-signed nodes). "
     "Default: the system's.")
@opt("--max-response-bytes", type=click.IntRange(min=1), default=64 << 20, show_default=True,
     help="Largest response body accepted from a node (streamed or whole); past it the client gets an error.")
@transport_options(opt)
@store_options(opt)
@opt("--seed", type=int, default=None, help="Seed for random tie-breaking (experiments).")
@opt("--log-level", default="info", show_default=True)
def route(**kw: Any) -> None:
    """Run the fleet router: one OpenAI-compatible URL in front of many nodes."""
    import uvicorn

    from server.router.app import create_app
    from server.transport import server_config

    limits = limits_from(kw)
    tls = tls_from(kw)
    settings = build_settings(kw)
    logging.basicConfig(level=kw["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise
    if not is_loopback(settings.host) and not settings.keys.enabled:
        if not kw["insecure"]:
            raise click.UsageError(f"refusing to bind {settings.host} without client keys; "
                                   "give --api-key or [[keys]] in the fleet file, or --insecure")
        click.secho("!" * 72 + f"\n WARNING: router on {settings.host} with NO authentication (--insecure)\n"
                    + "!" * 72, fg="red", err=True)
    app, router = create_app(settings)
    click.echo(f"edgefleet router on http{'s' if tls else ''}://{settings.host}:{settings.port} policy={settings.policy} "
               f"nodes={len(settings.nodes)} discover={settings.discover}", err=True)
    # Everything imported and built so far lives as long as the process: keep it out of the
    # cyclic GC's scans, which otherwise walk it again and again under load (Instagram's
    # gc.freeze recipe; measured about 0.1 ms of CPU per proxied request here).
    gc.collect()
    gc.freeze()
    # No X-Forwarded-* rewriting: nothing in the router reads the client address, and the
    # middleware would run on every proxied request.
    config = server_config(app, host=settings.host, port=settings.port, limits=limits,
                           log_level=kw["log_level"].lower(), proxy_headers=False, timeout_graceful_shutdown=5,
                           **tls)
    from server.lifecycle import draining_server

    def on_hup() -> None:  # reload the fleet file and keys; reopen the audit log (logrotate)
        try:
            router.reload(build_settings(kw))
        except (click.ClickException, OSError, ValueError) as exc:
            router.audit.reopen()
            log.error("SIGHUP: reload failed, keeping the previous keys and nodes: %s",
                      getattr(exc, "message", None) or exc)

    server = draining_server(config, lambda: router.drain(settings.shutdown_timeout), on_hup=on_hup)
    server.run()


def build_settings(kw: dict[str, Any]):
    from server.edge.security import ApiKey, KeyStore, hash_key
    from server.config import read_key_file
    from server.router.config import RouterSettings, keys_from_fleet, load_fleet
    from server.router.registry import NodeSpec, normalize_url

    for u in kw["nodes"]:
        try:
            normalize_url(u)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--node") from None
    specs = [NodeSpec(url=u) for u in kw["nodes"]]
    keys: list[ApiKey] = []
    limits = {}
    router_opts: dict[str, Any] = {}
    if kw["fleet_file"]:
        try:
            fleet = load_fleet(kw["fleet_file"])
            specs += [n.spec() for n in fleet.nodes]
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"fleet file: {exc}", param_hint="--fleet") from None
        keys, limits = keys_from_fleet(fleet)
        router_opts = fleet.router
    key = kw["api_key"] or (read_key_file(kw["api_key_file"]) if kw["api_key_file"] else None)
    if key:
        keys.append(ApiKey("default", hash_key(key)))
    admin_file = kw.get("admin_key_file")
    admin = kw.get("admin_key") or (read_key_file(admin_file) if admin_file else None)
    if admin:
        keys.append(ApiKey("admin", hash_key(admin), admin=True))
    _check_networks(tuple(kw.get("discovery_allow_networks", ())))
    discover = kw["discover"] if kw["discover"] is not None else router_opts.get("discover", not specs)
    try:
        discovered_key = read_key_file(kw["discovered_node_key_file"]) if kw["discovered_node_key_file"] else None
    except (OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--discovered-node-key-file") from None
    try:
        return RouterSettings(
            nodes=specs,
            policy=kw["policy"] or router_opts.get("policy", "nearest_idle"),
            seed=kw["seed"],
            poll_interval=kw["poll_interval"] or float(router_opts.get("poll_interval", 1.0)),
            connect_timeout=kw["connect_timeout"], first_byte_timeout=kw["first_byte_timeout"],
            read_timeout=kw["read_timeout"], total_deadline=kw["total_deadline"], max_attempts=kw["max_attempts"],
            failure_threshold=kw["failure_threshold"], success_threshold=kw["success_threshold"],
            open_s=kw["open_seconds"], discover=bool(discover),
            discover_interfaces=list(kw["discover_interfaces"]) or None,
            discovered_node_key=discovered_key,
            discovery_allow_networks=tuple(kw.get("discovery_allow_networks", ())),
            host=kw["host"], port=kw["port"], keys=KeyStore(keys), limits=limits,
            allowed_hosts=tuple(kw["allowed_hosts"]), allowed_origins=tuple(kw["allowed_origins"]),
            max_body_bytes=kw["max_body_bytes"], max_response_bytes=kw.get("max_response_bytes", 64 << 20),
            audit_log=kw["audit_log"], log_prompts=kw["log_prompts"], **store_settings(kw),
            shutdown_timeout=kw.get("shutdown_timeout", 30.0), node_ca_file=kw.get("node_ca_file"),
            first_byte_ttft_factor=kw.get("first_byte_ttft_factor", 3.0),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _check_networks(values: tuple[str, ...]) -> None:
    from server.router.trust import parse_networks

    try:
        parse_networks(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--discovery-allow-network") from None


@click.command()
@click.argument("url", default="http://127.0.0.1:8080")
@click.option("--api-key", envvar="EDGEFLEET_API_KEY", default=None, help="Client key for the router.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw /v1/fleet document.")
@click.option("--watch", type=float, default=None, help="Refresh every N seconds.")
@click.option("--export", "export", type=click.Choice(["llm-d"]), default=None,
              help="Write an endpoint picker's endpoints file (docs/deploy.md) instead of the table.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="With --export: the file to replace atomically (default: print to stdout).")
def fleet(url: str, api_key: str | None, as_json: bool, watch: float | None, export: str | None,
          out: str | None) -> None:
    """Show a router's fleet: every node's health, RTT, load and score."""
    import time

    import httpx
    from rich.console import Console
    from rich.live import Live

    console = Console()
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}

    def fetch() -> dict[str, Any]:
        try:
            resp = httpx.get(url.rstrip("/") + "/v1/fleet", headers=headers, timeout=5, trust_env=False)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach router at {url}: {exc}") from None
        if resp.status_code != 200:
            raise click.ClickException(f"router answered HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.json()

    if as_json:
        click.echo(json.dumps(fetch(), indent=2))
        return
    if export is not None:
        _export(fetch, url, out, watch)
        return
    if watch is None:
        console.print(fleet_table(fetch()))
        return
    with Live(fleet_table(fetch()), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(watch)
            live.update(fleet_table(fetch()))


def _export(fetch: Any, url: str, out: str | None, watch: float | None) -> None:
    import time
    from pathlib import Path

    from server.router.export import llmd_endpoints, render, write_atomic

    while True:
        doc, warnings = llmd_endpoints(fetch())
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
        text = render(doc, url)
        if out is None:
            click.echo(text, nl=False)
        else:
            write_atomic(Path(out), text)
        if watch is None:
            return
        time.sleep(watch)


def fleet_table(doc: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"edgefleet fleet (policy {doc['policy']}; score = {doc['score']})")
    for col in ("node", "url", "zone", "health", "state", "models", "running", "waiting", "kv %", "rtt ms",
                "score ms", "in flight"):
        table.add_column(col, justify="right" if col in ("running", "waiting", "kv %", "rtt ms", "score ms",
                                                         "in flight") else "left")
    for n in doc["nodes"]:
        cap = n.get("capacity") or {}
        load = cap.get("load") or {}
        health = n["health"]
        style = {"closed": "green", "half_open": "yellow", "open": "red"}.get(health, "")
        name = n["name"] + (" [magenta](sim)[/]" if n.get("simulated") else "")
        table.add_row(
            name, n["url"], n.get("zone") or "-", f"[{style}]{health}[/]", cap.get("state", "-"),
            ", ".join(_model_label(m) for m in cap.get("models", [])) or "-",
            str(load.get("running", "-")), str(load.get("waiting", "-")),
            f"{100 * load['kv_cache_usage']:.0f}" if "kv_cache_usage" in load else "-",
            "-" if n.get("rtt_ms") is None else f"{n['rtt_ms']:.1f}",
            "-" if n.get("score_ms") is None else f"{n['score_ms']:.1f}", str(n.get("inflight", 0)))
    return table


def _model_label(m: dict[str, Any]) -> str:
    """``id`` when loaded (and for version-1 nodes), else ``id (state)``."""
    state = m.get("state", "loaded")
    return m["id"] if state == "loaded" else f"{m['id']} ({state})"


@click.command()
@click.option("--router", "router_url", default="http://127.0.0.1:8080", show_default=True, envvar="EDGEFLEET_ROUTER",
              help="Base URL of a running edgefleet router.")
@click.option("--api-key", envvar="EDGEFLEET_API_KEY", default=None, help="Client key for the router.")
def mcp(router_url: str, api_key: str | None) -> None:
    """Serve the router's MCP tools over stdio (for agents that launch MCP servers)."""
    from server.router.mcp_tools import HttpBackend, build_mcp

    logging.basicConfig(level="WARNING", stream=sys.stderr)  # stdout carries the protocol
    build_mcp(HttpBackend(router_url, api_key)).run("stdio")


__all__ = ["fleet", "mcp", "route"]
