"""Timing harness shared by the kernel benchmarks: median of repeated runs, JSON + Markdown out."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

OUT_DIR = Path("benchmarks/results/kernels")


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def time_us(fn: Callable[[], object], repeat: int = 20, warmup: int = 3) -> float:
    """Median microseconds per call (synchronising CUDA around each call)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def report(name: str, rows: list[dict]) -> None:
    """Print a Markdown table and write JSON next to it."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{name}_{device()}.json").write_text(json.dumps(rows, indent=2))
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
              for r in rows]
    text = "\n".join(lines)
    (OUT_DIR / f"{name}_{device()}.md").write_text(text + "\n")
    print(f"## {name} ({device()})\n{text}\n")


def triton_or_none(module: str, fn: str):
    """The Triton launcher when a GPU is present; on CPU the interpreter is no benchmark."""
    if not torch.cuda.is_available():
        return None
    mod = __import__(f"kernels.{module}", fromlist=[fn])
    return getattr(mod, fn)
