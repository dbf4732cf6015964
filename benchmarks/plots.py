"""PNG plots with matplotlib (Agg backend: no display needed).

- latency percentiles against output throughput across a sweep,
- TTFT CDF (needs per-request detail: ``ttfts``),
- agent chains: TTFT and context size against step.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _many_models(results: list[dict[str, Any]]) -> bool:
    return len({r.get("model_id") for r in results}) > 1


def _rate(r: dict[str, Any]) -> float:
    rate = r.get("request_rate", "inf")
    return float("inf") if rate in (None, "inf") else float(rate)


def plot_sweep(results: list[dict[str, Any]], path: Path) -> Path | None:
    """Latency percentiles (y) against output throughput (x), one line per label and percentile."""
    # Only closed-/open-loop serve points line up on one throughput axis; chains do not.
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r.get("workload", "serve") == "serve":
            groups[f"{r.get('label')} {r.get('model_id')}" if _many_models(results) else str(r.get("label"))].append(r)
    if not any(len(g) > 1 for g in groups.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, metric, title in zip(axes, ("ttft", "tpot", "e2el"), ("TTFT", "TPOT", "E2EL")):
        for label, rs in groups.items():
            rs = sorted(rs, key=lambda r: (r.get("max_concurrency") or 0, _rate(r)))
            x = [r["output_throughput"] for r in rs]
            for p, style in (("p50", "-o"), ("p99", "--s")):
                key = f"{p}_{metric}_ms"
                if all(key in r for r in rs):
                    ax.plot(x, [r[key] for r in rs], style, label=f"{label} {p}")
            for r, xi in zip(rs, x):
                if r.get("max_concurrency") and f"p50_{metric}_ms" in r:
                    ax.annotate(f"c{r['max_concurrency']}", (xi, r[f"p50_{metric}_ms"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("output throughput (tok/s)")
        ax.set_ylabel(f"{title} (ms)")
        ax.set_title(f"{title} percentiles vs throughput")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_ttft_cdf(results: list[dict[str, Any]], path: Path) -> Path | None:
    series = []
    for r in results:
        errors = r.get("errors") or []
        ttfts = [t for i, t in enumerate(r.get("ttfts") or []) if not (i < len(errors) and errors[i])]
        if ttfts:
            conc = r.get("max_concurrency")
            series.append((f"{r.get('label')}" + (f" c{conc}" if conc else ""), np.sort(np.asarray(ttfts) * 1000)))
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, xs in series:
        ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=name)
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT CDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_chain(results: list[dict[str, Any]], path: Path) -> Path | None:
    chains = [r for r in results if r.get("agent")]
    if not chains:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in chains:
        steps = r["agent"]["per_step"]
        x = [s["step"] for s in steps]
        ax1.plot(x, [s["mean_ttft_ms"] for s in steps], "-o", label=f"{r.get('label')} mean")
        ax1.plot(x, [s["p99_ttft_ms"] for s in steps], "--s", label=f"{r.get('label')} p99")
        ax2.plot([s["mean_prompt_tokens"] for s in steps], [s["mean_ttft_ms"] for s in steps], "-o",
                 label=str(r.get("label")))
    ax1.set_xlabel("chain step")
    ax1.set_ylabel("TTFT (ms)")
    ax1.set_title("TTFT per chain step")
    ax2.set_xlabel("context (prompt tokens)")
    ax2.set_ylabel("mean TTFT (ms)")
    ax2.set_title("TTFT against context")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def write_plots(results: list[dict[str, Any]], out_dir: Path, stem: str) -> list[Path]:
    made = [plot_sweep(results, out_dir / f"{stem}-sweep.png"),
            plot_ttft_cdf(results, out_dir / f"{stem}-ttft-cdf.png"),
            plot_chain(results, out_dir / f"{stem}-chain.png")]
    return [p for p in made if p is not None]
