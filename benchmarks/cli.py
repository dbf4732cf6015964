"""`edgefleet bench`: serve, fleet, report. A thin layer over :mod:`benchmarks.runner`.

Flag names follow `vllm bench serve` wherever the concept is the same.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

MULTI_VALUE = ("--compare", "--goodput")  # vLLM style: --goodput ttft:500 tpot:50


class _MultiValueCommand(click.Command):
    """Accept ``--compare A B C`` as well as ``--compare A --compare B`` (click wants the latter)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["bench_argv"] = list(args)  # for the "Command:" line of the Markdown summary
        out: list[str] = []
        current = None
        for a in args:
            if a in MULTI_VALUE:
                current = a
                continue
            if current and not a.startswith("-"):
                out += [current, a]
                continue
            current = None
            out.append(a)
        return super().parse_args(ctx, out)


def _target_options(f: Callable) -> Callable:
    opts = [
        click.option("--base-url", help="Server URL, with or without /v1 (default: http://HOST:PORT)."),
        click.option("--host", default="127.0.0.1", show_default=True),
        click.option("--port", default=8000, show_default=True, type=int),
        click.option("--model", help="Model id; with no --tokenizer, also the tokenizer dir if it is one. "
                                     "Default: the server's first model."),
        click.option("--served-model-name", help="Name sent in requests, when it differs from --model."),
        click.option("--tokenizer", help="Local Hugging Face tokenizer dir (no downloads)."),
        click.option("--api-key", default=None, help="Bearer key (default: $OPENAI_API_KEY); env:NAME reads NAME."),
        click.option("--backend", type=click.Choice(["openai", "vllm", "openai-chat"]), default="openai",
                     show_default=True, help="openai/vllm: /v1/completions; openai-chat: /v1/chat/completions."),
        click.option("--endpoint", help="API path (default from --backend)."),
        click.option("--header", multiple=True, help="Extra header KEY=VALUE (repeatable)."),
        click.option("--label", help="Name of this run in files and tables (default: host:port)."),
        click.option("--compare", multiple=True, metavar="URL[,model=M,key=K,label=L,backend=B]",
                     help="Run the same workload against each endpoint, interleaved; ratios to the first."),
        click.option("--rounds", type=int, default=None,
                     help="Interleaved rounds (A B, A B, ...). Default 3 with --compare, else 1."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _workload_options(f: Callable) -> Callable:
    opts = [
        click.option("--dataset-name", type=click.Choice(["random", "sharegpt", "custom", "jsonl"]), default="random",
                     show_default=True, help="custom/jsonl: one {'prompt': ...} object per line."),
        click.option("--dataset-path", type=click.Path(exists=True, dir_okay=False)),
        click.option("--num-prompts", type=int, default=1000, show_default=True),
        click.option("--random-input-len", type=int, default=1024, show_default=True),
        click.option("--random-output-len", type=int, default=128, show_default=True),
        click.option("--random-range-ratio", type=float, default=0.0, show_default=True),
        click.option("--random-prefix-len", type=int, default=0, show_default=True),
        click.option("--sharegpt-output-len", type=int, help="Override the reference answers' lengths."),
        click.option("--custom-output-len", type=int, help="Output length for custom/jsonl prompts."),
        click.option("--input-len", type=int, help="Alias of --random-input-len."),
        click.option("--output-len", type=int, help="Sets the output length of every dataset."),
        click.option("--ignore-eos/--no-ignore-eos", default=None,
                     help="Generate exactly the output length (default on for random)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--temperature", type=float),
        click.option("--top-p", type=float),
        click.option("--top-k", type=int),
        click.option("--extra-body", help="JSON object merged into every request body."),
        click.option("--workload", type=click.Choice(["serve", "agent-chain"]), default="serve", show_default=True),
        click.option("--num-chains", type=int, default=8, show_default=True, help="agent-chain: chains (C)."),
        click.option("--chain-steps", type=int, default=4, show_default=True, help="agent-chain: calls per chain (K)."),
        click.option("--tool-result-len", type=int, default=64, show_default=True,
                     help="agent-chain: tokens of each tool result (T)."),
        click.option("--tool-delay-ms", type=float, default=100.0, show_default=True,
                     help="agent-chain: simulated tool time between steps."),
        click.option("--max-concurrency", type=int, help="Closed loop: at most this many requests in flight."),
        click.option("--request-rate", type=float, default=math.inf, show_default=True,
                     help="Open loop: requests per second (inf: all at once)."),
        click.option("--burstiness", type=float, default=1.0, show_default=True,
                     help="Gamma shape of inter-arrivals: 1 Poisson, <1 burstier, >1 more regular."),
        click.option("--ramp-up-strategy", type=click.Choice(["linear", "exponential"])),
        click.option("--ramp-up-start-rps", type=float),
        click.option("--ramp-up-end-rps", type=float),
        click.option("--num-warmups", type=int, default=0, show_default=True),
        click.option("--sweep", is_flag=True, help="Concurrency 1, 2, 4, ... until throughput stops rising."),
        click.option("--sweep-max-concurrency", type=int, default=64, show_default=True),
        click.option("--sweep-min-gain", type=float, default=0.05, show_default=True,
                     help="A step must raise output throughput by this fraction to go on."),
        click.option("--goodput", multiple=True, metavar="KEY:MS", help="SLOs: ttft:MS tpot:MS e2el:MS."),
        click.option("--metric-percentiles", default="50,90,95,99", show_default=True),
        click.option("--save-result", is_flag=True, help="Write JSON per result, a Markdown summary and PNG plots."),
        click.option("--save-detailed", is_flag=True, help="Include per-request detail in the JSON."),
        click.option("--result-dir", type=click.Path(file_okay=False), default=".", show_default=True),
        click.option("--result-filename", help="Name of the JSON file (single result only)."),
        click.option("--metadata", multiple=True, help="KEY=VALUE recorded in the result (repeatable)."),
        click.option("--disable-tqdm", is_flag=True, help="No progress bar."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.group(name="bench")
def bench() -> None:
    """Latency benchmarks against any OpenAI-compatible endpoint (definitions as `vllm bench serve`)."""


@bench.command(cls=_MultiValueCommand)
@_target_options
@_workload_options
def serve(**kw: Any) -> None:
    """Benchmark one endpoint, or several interleaved with --compare."""
    _execute(kw, fleet=False)


@bench.command(cls=_MultiValueCommand)
@_target_options
@_workload_options
def fleet(**kw: Any) -> None:
    """Drive an edgefleet router; report each node's share of requests and latency next to the totals."""
    _execute(kw, fleet=True)


@bench.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output-dir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--title", default="edgefleet bench report", show_default=True)
def report(files: tuple[str, ...], output_dir: str, title: str) -> None:
    """Merge result files (ours or `vllm bench serve`'s) into one Markdown table and PNG plots."""
    from benchmarks.plots import write_plots
    from benchmarks.report import load_results, markdown

    results = load_results([Path(f) for f in files])
    if not results:
        raise click.ClickException("no benchmark results in those files")
    results.sort(key=lambda r: (str(r.get("label")), r.get("max_concurrency") or 0, str(r.get("date"))))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(results, title)
    (out / "report.md").write_text(md)
    plots = write_plots(results, out, "report")
    click.echo(md)
    click.echo(f"wrote {out / 'report.md'}" + "".join(f", {p}" for p in plots), err=True)


# --- implementation -----------------------------------------------------------------------


def _execute(kw: dict[str, Any], fleet: bool) -> None:
    from benchmarks.client import EndpointError

    try:
        _run(kw, fleet)
    except EndpointError as exc:
        raise click.ClickException(str(exc)) from None
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"{type(exc).__name__ if isinstance(exc, OSError) else 'error'}: {exc}") from None


def _run(kw: dict[str, Any], fleet: bool) -> None:
    from benchmarks.metrics import parse_goodput
    from benchmarks.plots import write_plots
    from benchmarks.report import console_summary, markdown, run_stem, save_results, strip_detail
    from benchmarks.runner import run_benchmark_async, run_sweep_async

    endpoints = _endpoints(kw)
    model = kw["model"]
    tok_path = kw["tokenizer"] or (model if model and Path(model).expanduser().is_dir() else None)
    tokenizer = _tokenizer(tok_path)
    remote = None
    if tokenizer is None and (kw["dataset_name"] == "random" or kw["workload"] == "agent-chain"):
        remote = _remote_tokenizer(endpoints[0])  # the node's own, over /tokenize and /detokenize
    workload = _workload(kw, tokenizer or remote, tok_path or (remote and f"{remote.root}/tokenize"),
                         chat=endpoints[0].chat)
    if remote is not None:
        remote.close()
    workload.goodput = parse_goodput(kw["goodput"]) if kw["goodput"] else None
    rounds = kw["rounds"] or (3 if len(endpoints) > 1 else 1)
    progress = not kw["disable_tqdm"]
    if kw["sweep"]:
        results = asyncio.run(run_sweep_async(endpoints, workload, max_level=kw["sweep_max_concurrency"],
                                              min_gain=kw["sweep_min_gain"], rounds=rounds, tokenizer=tokenizer,
                                              progress=progress))
    else:
        results = asyncio.run(run_benchmark_async(endpoints, workload, rounds=rounds, tokenizer=tokenizer,
                                                  progress=progress))
    weights = _weight_bytes(tok_path)
    for r in results:
        _add_floor(r, weights)
        click.echo(console_summary(r))
        if fleet:
            click.echo(_node_table(r))
    if not kw["save_result"]:
        return
    out = Path(kw["result_dir"])
    paths = save_results(results, out, kw["save_detailed"], kw["result_filename"])
    stem = run_stem(results, sweep=kw["sweep"])
    md = out / f"{stem}.md"
    md.write_text(markdown([strip_detail(r) for r in results], "edgefleet bench " + ("fleet" if fleet else "serve"),
                           command=_command_line()))
    plots = write_plots(results, out, stem)
    for p in [*paths, md, *plots]:
        click.echo(f"wrote {p}", err=True)


def _weight_bytes(model_dir: str | None) -> int | None:
    """Size of the weights when the model is a local directory (for the decode floor)."""
    if not model_dir or not Path(model_dir).expanduser().is_dir():
        return None
    files = list(Path(model_dir).expanduser().glob("*.safetensors")) or list(Path(model_dir).expanduser().glob("*.bin"))
    return sum(f.stat().st_size for f in files) or None


def _add_floor(res: dict[str, Any], weight_bytes: int | None) -> None:
    """BENCHMARKS.md: batch-1 decode reads every weight once per token, so
    floor TPOT = weight bytes / memory bandwidth (KV reads ignored: a lower bound)."""
    ctx = res.get("context") or {}
    models = (ctx.get("capacity") or {}).get("models") or []
    wb = weight_bytes or next((m.get("weight_bytes") for m in models if m.get("weight_bytes")), None)
    bw = (ctx.get("machine") or {}).get("memory_bandwidth_gbs")
    if wb:
        res["weight_bytes"] = wb
    if wb and bw:
        res["decode_floor_ms_per_token"] = wb / (bw * 1e9) * 1000.0


def _remote_tokenizer(ep: Any) -> Any:
    from benchmarks.remote_tokenizer import RemoteTokenizer

    return RemoteTokenizer.probe(ep.base_url, ep.model, ep.api_key, ep.headers)


def _tokenizer(path: str | None) -> Any:
    from benchmarks.datasets import load_tokenizer

    return load_tokenizer(path) if path else None


def _endpoints(kw: dict[str, Any]) -> list:
    from benchmarks.client import Endpoint, env_key

    key = env_key(kw["api_key"]) if kw["api_key"] else os.environ.get("OPENAI_API_KEY")
    headers = {}
    for item in kw["header"]:
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"--header {item!r}: expected KEY=VALUE")
        headers[k.strip()] = v.strip()
    model = kw["served_model_name"] or kw["model"]
    eps = []
    if kw["base_url"] or not kw["compare"]:
        base = kw["base_url"] or f"http://{kw['host']}:{kw['port']}"
        eps.append(Endpoint(base, model or _first_model(base, key), key, kw["label"], kw["backend"],
                            kw["endpoint"], headers, model_id=kw["model"]))
    for spec in kw["compare"]:
        url, *parts = spec.split(",")
        opts = {}
        for p in parts:
            k, sep, v = p.partition("=")
            if not sep or k not in ("model", "key", "label", "backend"):
                raise ValueError(f"--compare {spec!r}: expected URL[,model=M,key=K,label=L,backend=B]")
            opts[k] = v
        ep_key = env_key(opts["key"]) if "key" in opts else key
        eps.append(Endpoint(url, opts.get("model") or model or _first_model(url, ep_key), ep_key, opts.get("label"),
                            opts.get("backend", kw["backend"]), kw["endpoint"], headers,
                            model_id=None if "model" in opts else kw["model"]))
    labels = [e.label for e in eps]
    for i, e in enumerate(eps):  # two runs of one URL must stay apart in tables
        if labels.count(e.label) > 1:
            e.label = f"{e.label}#{i}"
    return eps


def _first_model(base_url: str, key: str | None) -> str:
    """vLLM's behaviour without --model: the server's first model."""
    import httpx

    from benchmarks.client import Endpoint, EndpointError, check_endpoint

    ep = Endpoint(base_url, "", key)

    async def go() -> list[str] | None:
        async with httpx.AsyncClient(trust_env=False) as c:
            ep.model = "\0"  # check_endpoint then only lists; the model test comes later
            try:
                return await check_endpoint(c, ep)
            except EndpointError as exc:
                if "is unknown to" in str(exc):
                    return [s.strip() for s in str(exc).split("it serves:", 1)[1].split(",")]
                raise

    ids = asyncio.run(go())
    if not ids:
        raise EndpointError(f"{base_url} lists no model; pass --model")
    return ids[0]


def _workload(kw: dict[str, Any], tokenizer: Any, tok_path: str | None, chat: bool) -> Any:
    from benchmarks.agent import ChainSpec, tool_results
    from benchmarks.datasets import jsonl_requests, random_requests, sharegpt_requests
    from benchmarks.load import RampUp
    from benchmarks.runner import Workload

    name = kw["dataset_name"]
    out_len = kw["output_len"]
    chain = None
    n = kw["num_prompts"]
    if kw["workload"] == "agent-chain":
        chain = ChainSpec(kw["num_chains"], kw["chain_steps"], kw["tool_result_len"], kw["tool_delay_ms"])
        n = chain.num_chains
    if name == "random":
        if tokenizer is None:
            raise ValueError("the random dataset needs the model's tokenizer: pass --tokenizer DIR "
                             "(a local Hugging Face directory; the endpoint has no POST /tokenize to fall "
                             "back to), or use --dataset-name sharegpt/custom")
        requests = random_requests(tokenizer, n, kw["input_len"] or kw["random_input_len"],
                                   out_len or kw["random_output_len"], kw["random_range_ratio"], kw["seed"],
                                   kw["random_prefix_len"])
    else:
        if not kw["dataset_path"]:
            raise ValueError(f"--dataset-name {name} needs --dataset-path")
        if name == "sharegpt":
            requests = sharegpt_requests(kw["dataset_path"], n, tokenizer, out_len or kw["sharegpt_output_len"],
                                         kw["seed"])
        else:
            requests = jsonl_requests(kw["dataset_path"], n, tokenizer, out_len or kw["custom_output_len"], kw["seed"])
    ramp = None
    if kw["ramp_up_strategy"]:
        if kw["ramp_up_start_rps"] is None or kw["ramp_up_end_rps"] is None:
            raise ValueError("--ramp-up-strategy needs --ramp-up-start-rps and --ramp-up-end-rps")
        if not math.isinf(kw["request_rate"]):
            raise ValueError("with --ramp-up-strategy the rate comes from the ramp; drop --request-rate")
        ramp = RampUp(kw["ramp_up_strategy"], kw["ramp_up_start_rps"], kw["ramp_up_end_rps"])
    if kw["max_concurrency"] is not None and kw["max_concurrency"] <= 0:
        raise ValueError("--max-concurrency must be positive")
    extra = json.loads(kw["extra_body"]) if kw["extra_body"] else {}
    if not isinstance(extra, dict):
        raise ValueError("--extra-body must be a JSON object")
    for k in ("temperature", "top_p", "top_k"):
        if kw[k] is not None:
            extra[k] = kw[k]
    meta = {}
    for item in kw["metadata"]:
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"--metadata {item!r}: expected KEY=VALUE")
        meta[k.strip()] = v.strip()
    return Workload(
        requests=requests, name=kw["workload"], dataset_name=name, request_rate=kw["request_rate"],
        burstiness=kw["burstiness"], max_concurrency=kw["max_concurrency"], ramp_up=ramp,
        ignore_eos=kw["ignore_eos"] if kw["ignore_eos"] is not None else name == "random",
        extra_body=extra or None, seed=kw["seed"], num_warmups=kw["num_warmups"],
        percentiles=tuple(float(p) for p in kw["metric_percentiles"].split(",")), chain=chain,
        tool_results=tool_results(tokenizer, chain, kw["seed"]) if chain else None, tokenizer_id=tok_path,
        save_detailed=True,  # kept in memory for the plots; stripped from files unless --save-detailed
        metadata=meta)


def _node_table(res: dict[str, Any]) -> str:
    nodes = res.get("nodes")
    if not nodes:
        return "(no X-Edgefleet-Node header in the responses: not an edgefleet router?)"
    lines = [f"{'node':<24} {'share':>7} {'ok/fail':>9} {'out tok/s':>10} {'TTFT mean':>10} {'TTFT p99':>9} "
             f"{'TPOT mean':>10} {'E2EL p99':>9}"]
    rows = [(n, v) for n, v in nodes.items()] + [("TOTAL", {**res, "share": 1.0})]
    for n, v in rows:
        lines.append(f"{n[:24]:<24} {v['share'] * 100:>6.1f}% {str(v['completed']) + '/' + str(v['failed']):>9} "
                     f"{v['output_throughput']:>10.1f} {v['mean_ttft_ms']:>10.1f} {v.get('p99_ttft_ms') or 0:>9.1f} "
                     f"{v['mean_tpot_ms']:>10.2f} {v.get('p99_e2el_ms') or 0:>9.1f}")
    return "\n".join(lines)


def _command_line() -> str:
    """The command as typed, keys redacted."""
    ctx = click.get_current_context()
    args, out, hide = ctx.meta.get("bench_argv", []), [], False
    for a in args:
        if hide:
            out.append("***")
            hide = False
            continue
        if a == "--api-key":
            hide = True
        elif a.startswith("--api-key="):
            a = "--api-key=***"
        elif ",key=" in a and not a.split(",key=", 1)[1].startswith("env:"):
            a = ",".join("key=***" if p.startswith("key=") else p for p in a.split(","))
        out.append(a)
    path = ctx.command_path if ctx.command_path.startswith("edgefleet") else "edgefleet " + ctx.command_path
    return path + " " + " ".join(shlex.quote(a) for a in out)


__all__ = ["bench"]
