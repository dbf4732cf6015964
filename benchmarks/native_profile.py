"""Where a native decode step's time goes, per generated token, by kind of work.

    python -m benchmarks.native_profile                  # SmolLM2 Q4_1 GGUF, batch 1
    python -m benchmarks.native_profile --model DIR --batch 8

Runs ``--steps`` greedy decode steps after a ``--input-len`` prefill under
``torch.profiler`` and groups the operators' self CPU time:

- ``int4 GEMV``: torch's packed int4 matmul (the Q4_1 layers);
- ``dense GEMM``: oneDNN / ``mm`` / ``linear`` (the bf16 lm_head of a tied Q8_0 embedding);
- ``attention``: SDPA and the KV gather/scatter around it;
- ``other ops``: every other torch operator (norms, rotary, silu, casts, views);
- ``outside ops``: the step's wall time not spent in an operator (Python: scheduler,
  sampler, module calls, the profiler's own cost).

The profiler adds a few microseconds per operator, so the profiled step is slower than an
unprofiled one; both are printed. Stdout only; this explains a benchmark, it is not one.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import random
import time
from collections import defaultdict
from pathlib import Path

GROUPS = (
    ("int4 GEMV", ("_weight_int4pack_mm",)),
    ("int8 GEMV", ("_weight_int8pack_mm",)),
    ("dense GEMM", ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::linear")),
    ("attention", ("scaled_dot_product", "aten::index_select", "aten::index_copy", "aten::index_put")),
)


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other ops"


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from server.config import NodeSettings
    from server.engine.base import GenerateRequest, SamplingOptions
    from server.engine.native.setup import build_engine
    from server.model_cache import ensure_default_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF file or model dir (default: SmolLM2 Q4_1)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or ensure_default_model()
    s = NodeSettings(engine="native", dtype="bfloat16", max_model_len=1024, max_num_seqs=args.batch,
                     kv_cache_gb=0.5)
    core = build_engine(s, model, "profile").core
    rng = random.Random(0)

    def decode(n_steps: int, prof=None) -> float:
        for _ in range(args.batch):
            prompt = [rng.randrange(1000, 40000) for _ in range(args.input_len)]
            core.add_request(GenerateRequest(f"p{rng.random()}", prompt,
                                             SamplingOptions(max_tokens=n_steps + 1, temperature=0.0, ignore_eos=True)))
        core.step()  # prefill (and the first token)
        if prof is not None:
            prof.start()
        t, steps = time.perf_counter(), 0
        while core.has_work():
            core.step()
            steps += 1
        wall = (time.perf_counter() - t) / steps
        if prof is not None:
            prof.stop()
        return wall

    decode(4)
    plain = min(decode(args.steps) for _ in range(3))
    prof = profile(activities=[ProfilerActivity.CPU])
    profiled = decode(args.steps, prof)
    per: dict[str, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        g = group_of(ev.key)
        per[g] += ev.self_cpu_time_total / 1e3 / args.steps  # us -> ms per step
        calls[g] += ev.count / args.steps
    per["outside ops"] = max(0.0, profiled * 1e3 - sum(per.values()))
    print(f"model {model.name}, batch {args.batch}, {args.threads} threads, context {args.input_len}+")
    print(f"decode step: {plain * 1e3:.1f} ms unprofiled (best of 3), {profiled * 1e3:.1f} ms profiled\n")
    print("| work | ms per step | share | ops per step |")
    print("|---|---|---|---|")
    for g in ("int4 GEMV", "int8 GEMV", "dense GEMM", "attention", "other ops", "outside ops"):
        if per.get(g):
            n = f"{calls[g]:.0f}" if g in calls else "-"
            print(f"| {g} | {per[g]:.1f} | {100 * per[g] / (profiled * 1e3):.0f} % | {n} |")


if __name__ == "__main__":
    main()
