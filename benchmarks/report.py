"""Result files: names, JSON, console summary, Markdown tables, and merging many files."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

DETAIL_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "queue_times",
               "generated_texts", "errors", "nodes_per_request", "tags")


def _safe(s: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


def result_filename(res: dict[str, Any]) -> str:
    """vLLM's scheme: ``{label}-{rate}qps[-concurrency{C}]-{model}-{date}.json`` (+ workload tag)."""
    label = _safe(res.get("label") or res.get("backend"))
    rate = res.get("request_rate", "inf")
    conc = f"-concurrency{res['max_concurrency']}" if res.get("max_concurrency") is not None else ""
    work = "" if res.get("workload", "serve") == "serve" else f"-{_safe(res['workload'])}"
    model = _safe(str(res.get("model_id", "model")).rstrip("/").split("/")[-1])
    return f"{label}{work}-{rate}qps{conc}-{model}-{res.get('date', 'nodate')}.json"


def run_stem(results: list[dict[str, Any]], sweep: bool = False) -> str:
    """Name of a run's Markdown and PNG files: the first result's name, or its sweep form."""
    first = results[0]
    if not sweep:
        stem = result_filename(first)[:-5]
    else:
        label = _safe(first.get("label") or first.get("backend"))
        model = _safe(str(first.get("model_id", "model")).rstrip("/").split("/")[-1])
        stem = f"{label}-sweep-{model}-{first.get('date', 'nodate')}"
    return stem + ("-compare" if len({r.get("label") for r in results}) > 1 else "")


def strip_detail(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if k not in DETAIL_KEYS}


def save_results(results: list[dict[str, Any]], result_dir: Path, detailed: bool,
                 filename: str | None = None) -> list[Path]:
    """One JSON file per result (per endpoint and sweep point), like `vllm bench serve`."""
    result_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, res in enumerate(results):
        name = filename if filename and len(results) == 1 else result_filename(res)
        if filename and len(results) > 1:
            name = f"{Path(filename).stem}-{i}.json"
        path = result_dir / name
        path.write_text(json.dumps(res if detailed else strip_detail(res), indent=1, default=str))
        paths.append(path)
    return paths


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    """Accept one dict per file, a list of dicts, or JSON lines (vLLM's --append-result)."""
    out: list[dict[str, Any]] = []
    for p in paths:
        text = Path(p).read_text()
        try:
            data = json.loads(text)
            items = data if isinstance(data, list) else [data]
        except json.JSONDecodeError:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        for item in items:
            if isinstance(item, dict) and "completed" in item:
                item.setdefault("_file", str(p))
                out.append(item)
    return out


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{nd}f}"
    return str(v)


def console_summary(res: dict[str, Any]) -> str:
    """The block `vllm bench serve` prints, so its users read it at a glance."""
    w = 50
    lines = [f"{' Serving Benchmark Result: ' + str(res.get('label')) + ' ':=^{w}}"]

    def row(name: str, v: Any, nd: int = 2) -> None:
        lines.append(f"{name:<40} {_f(v, nd):<10}")

    row("Successful requests:", res["completed"])
    row("Failed requests:", res["failed"])
    if res.get("max_concurrency") is not None:
        row("Maximum request concurrency:", res["max_concurrency"])
    if res.get("request_rate") not in (None, "inf"):
        row("Request rate configured (RPS):", float(res["request_rate"]))
    row("Benchmark duration (s):", res["duration"])
    row("Total input tokens:", res["total_input_tokens"])
    row("Total generated tokens:", res["total_output_tokens"])
    row("Request throughput (req/s):", res["request_throughput"])
    if res.get("request_goodput") is not None:
        row("Request goodput (req/s):", res["request_goodput"])
    row("Output token throughput (tok/s):", res["output_throughput"])
    row("Total token throughput (tok/s):", res["total_token_throughput"])
    if res.get("decode_floor_ms_per_token"):
        row("Decode floor, batch 1 (ms/token):", res["decode_floor_ms_per_token"], 3)
    for metric, header in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                           ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):
        lines.append(f"{header:-^{w}}")
        name = metric.upper()
        row(f"Mean {name} (ms):", res.get(f"mean_{metric}_ms"))
        row(f"Median {name} (ms):", res.get(f"median_{metric}_ms"))
        for key in sorted((k for k in res if re.fullmatch(rf"p[\d.]+_{metric}_ms", k)),
                          key=lambda k: float(k[1:].split("_")[0])):
            row(f"P{key[1:].split('_')[0]} {name} (ms):", res[key])
    if res.get("agent"):
        a = res["agent"]
        lines.append(f"{'Agent chains':-^{w}}")
        row("Completed chains:", a["completed_chains"])
        row("Chain completion p50 (ms):", a["p50_chain_ms"])
        row("Chain completion p99 (ms):", a["p99_chain_ms"])
        row("TTFT growth (ms per 1k ctx tokens):", a["ttft_ms_per_1k_context_tokens"])
    if res.get("ratios_to_first"):
        lines.append(f"{' Ratio to ' + str(res['ratios_to_first']['baseline']) + ' (median of rounds) ':-^{w}}")
        for k, v in res["ratios_to_first"]["median"].items():
            row(f"{k}:", v, 3)
    lines.append("=" * w)
    return "\n".join(lines)


MAIN_COLUMNS = [
    ("label", "label", 0), ("model", "model_id", 0), ("workload", "workload", 0), ("conc", "max_concurrency", 0),
    ("rate", "request_rate", 0), ("ok/fail", None, 0), ("req/s", "request_throughput", 2),
    ("out tok/s", "output_throughput", 1), ("goodput", "request_goodput", 2),
    ("TTFT mean", "mean_ttft_ms", 1), ("TTFT p50", "p50_ttft_ms", 1), ("TTFT p99", "p99_ttft_ms", 1),
    ("TPOT mean", "mean_tpot_ms", 2), ("TPOT p99", "p99_tpot_ms", 2), ("ITL p99", "p99_itl_ms", 2),
    ("E2EL p50", "p50_e2el_ms", 1), ("E2EL p99", "p99_e2el_ms", 1),
]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(results: list[dict[str, Any]], title: str = "edgefleet bench results",
             command: str | None = None) -> str:
    out = [f"# {title}", ""]
    if command:
        out += ["Command:", "", "```", command, "```", ""]
    out += ["Latencies in ms, throughput per second. Definitions: BENCHMARKS.md (same as `vllm bench serve`).", ""]
    rows = []
    for r in results:
        row = []
        for name, key, nd in MAIN_COLUMNS:
            row.append(f"{r.get('completed')}/{r.get('failed')}" if key is None else _f(r.get(key), nd))
        rows.append(row)
    out += _table([c[0] for c in MAIN_COLUMNS], rows)
    ratio_rows = [r for r in results if r.get("ratios_to_first")]
    if ratio_rows:
        keys = list(ratio_rows[0]["ratios_to_first"]["median"])
        out += ["", "## Ratios to the first endpoint (median over interleaved rounds)", ""]
        out += _table(["label", "baseline", "conc", *keys],
                      [[str(r["label"]), str(r["ratios_to_first"]["baseline"]), _f(r.get("max_concurrency")),
                        *(_f(r["ratios_to_first"]["median"][k], 3) for k in keys)] for r in ratio_rows])
    for r in results:
        if r.get("nodes"):
            out += ["", f"## Per node: {r['label']} (concurrency {_f(r.get('max_concurrency'))})", ""]
            out += _table(["node", "share", "ok/fail", "out tok/s", "TTFT mean", "TTFT p99", "TPOT mean", "E2EL p99"],
                          [[n, f"{v['share'] * 100:.1f}%", f"{v['completed']}/{v['failed']}",
                            _f(v["output_throughput"]), _f(v["mean_ttft_ms"]), _f(v.get("p99_ttft_ms")),
                            _f(v["mean_tpot_ms"], 2), _f(v.get("p99_e2el_ms"))] for n, v in r["nodes"].items()]
                          + [["**total**", "100%", f"{r['completed']}/{r['failed']}", _f(r["output_throughput"]),
                              _f(r["mean_ttft_ms"]), _f(r.get("p99_ttft_ms")), _f(r["mean_tpot_ms"], 2),
                              _f(r.get("p99_e2el_ms"))]])
        if r.get("agent"):
            a = r["agent"]
            out += ["", f"## Agent chains: {r['label']}: {a['num_chains']} chains x {a['steps']} steps, "
                        f"tool result {a['tool_result_len']} tokens, tool delay {a['tool_delay_ms']} ms", "",
                    f"Chain completion: p50 {_f(a['p50_chain_ms'])} ms, p99 {_f(a['p99_chain_ms'])} ms; "
                    f"completed {a['completed_chains']}, failed {a['failed_chains']}; TTFT grows "
                    f"{_f(a['ttft_ms_per_1k_context_tokens'], 2)} ms per 1k context tokens.", ""]
            out += _table(["step", "mean context tokens", "TTFT mean", "TTFT p50", "TTFT p99", "TPOT mean"],
                          [[str(s["step"]), _f(s["mean_prompt_tokens"]), _f(s["mean_ttft_ms"]), _f(s["p50_ttft_ms"]),
                            _f(s["p99_ttft_ms"]), _f(s["mean_tpot_ms"], 2)] for s in a["per_step"]])
    out += ["", "## What was measured", ""]
    seen = set()
    for r in results:
        if r.get("label") in seen:
            continue
        seen.add(r.get("label"))
        floor = (f"; batch-1 decode floor {r['decode_floor_ms_per_token']:.3f} ms/token "
                 f"({r['weight_bytes'] / 1e6:.1f} MB of weights / copy bandwidth)"
                 if r.get("decode_floor_ms_per_token") else "")
        out.append(f"- **{r.get('label')}**: {describe_context(r.get('context') or {})}{floor}")
    return "\n".join(out) + "\n"


def describe_context(ctx: dict[str, Any]) -> str:
    if ctx.get("target") == "edgefleet":
        cap = ctx.get("capacity") or {}
        ident = cap.get("identity") or {}
        accs = ", ".join(a.get("name", "?") for a in cap.get("accelerators") or []) or "?"
        models = ", ".join(f"{m.get('id')} ({m.get('dtype')}{', random weights' if m.get('random_weights') else ''})"
                           for m in cap.get("models") or [])
        return (f"edgefleet node {ident.get('name', '?')} (engine {ident.get('engine', '?')}, "
                f"version {ident.get('version', '?')}); accelerators: {accs}; models: {models or '?'}")
    if ctx.get("target") == "edgefleet-router":
        nodes = (ctx.get("fleet") or {}).get("nodes") or []
        return (f"edgefleet router (policy {(ctx.get('fleet') or {}).get('policy', '?')}) in front of "
                + ", ".join(f"{n.get('name')} ({((n.get('capacity') or {}).get('identity') or {}).get('engine', '?')})"
                            for n in nodes))
    m = ctx.get("machine") or {}
    if not m:
        return "no context recorded"
    gpus = ", ".join(g["name"] for g in m.get("gpus") or []) or "no GPU"
    bw = f", memory bandwidth {m['memory_bandwidth_gbs']:.1f} GB/s (copy)" if m.get("memory_bandwidth_gbs") else ""
    return (f"{m.get('cpu')} x{m.get('usable_cpus')} CPUs, {m.get('memory_total_bytes', 0) / 2**30:.1f} GiB RAM, "
            f"{gpus}{bw}; facts from the {m.get('measured_on', 'client')}")
