"""Native engine on a GPU: batch-1 decode of an 8B-shaped random Llama against the HBM floor.

    python -m benchmarks.native_gpu                       # on a GPU machine, ~5 minutes
    python -m benchmarks.native_gpu --device cpu --shape tiny --output-len 4   # smoke run

For each variant (bf16 with CUDA graphs, bf16 eager, int8, int4 group 128) it builds the
model through the engine's own loader, with random weights generated on the device (no
16 GB checkpoint to write or read), and measures, at batch 1, greedy, ``ignore_eos``:

- TPOT = (wall(N tokens) - wall(1 token)) / (N - 1), so the prompt does not count;
- decode tokens/s = 1000 / TPOT;
- % of the HBM floor: floor = the variant's weight bytes / the device bandwidth, measured
  in the same run as a large device-to-device copy (bytes read + written);
- transformers' ``generate`` on a model of the same shape (bf16, its own random init), with
  the same prompt and token counts, when transformers is installed.

Goals (issue: native engine): bf16 at >= 85 % of the floor; int4 >= 2.5x bf16 tokens/s.
Writes benchmarks/results/native_gpu.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

OUT = Path("benchmarks/results")

SHAPES = {  # Llama 3 8B, and a tiny one for smoke runs
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
               max_position_embeddings=8192),
    "tiny": dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                 max_position_embeddings=2048),
}

VARIANTS = {  # name -> (quantization, engine options)
    "bf16": (None, {"decode_graphs": "auto"}),
    "bf16-eager": (None, {"decode_graphs": "off"}),
    "int8": ("int8", {"decode_graphs": "auto"}),
    "int4": ("int4", {"decode_graphs": "auto", "int4_group_size": 128}),
}


class RandomWeights:
    """The loader's tensor source, generating each tensor on the device when asked."""

    def __init__(self, cfg: dict[str, Any], device: torch.device, seed: int = 0):
        h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
        d = h // cfg["num_attention_heads"]
        q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
        self.shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h), "model.norm.weight": (h,)}
        for n in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{n}."
            self.shapes |= {
                p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i)}
        self.device = device
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def get(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        if len(shape) == 1:  # norm weights
            return torch.ones(shape, dtype=torch.bfloat16, device=self.device)
        w = torch.empty(shape, dtype=torch.bfloat16, device=self.device)
        return w.normal_(0.0, 0.02, generator=self.gen)

    def maybe(self, name: str) -> torch.Tensor | None:
        return self.get(name) if name in self else None


def model_dir(shape: str, tmp: Path) -> Path:
    """Config and tokenizer only: a tiny local tokenizer (ids past it decode to nothing)."""
    from server.demo_model import TinyLlamaSpec, build_llama_dir

    d = build_llama_dir(tmp / shape, TinyLlamaSpec(vocab_size=1024, hidden_size=64, intermediate_size=128,
                                                   num_hidden_layers=1, num_attention_heads=2,
                                                   num_key_value_heads=1),
                        model_id=f"random-llama-{shape}")
    for f in d.glob("*.safetensors"):
        f.unlink()  # the weights come from RandomWeights
    cfg = json.loads((d / "config.json").read_text())
    cfg |= SHAPES[shape] | {"head_dim": SHAPES[shape]["hidden_size"] // SHAPES[shape]["num_attention_heads"],
                            "torch_dtype": "bfloat16"}
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def bandwidth_gbps(device: torch.device, gib: float) -> float:
    n = int(gib * (1 << 30)) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return 2 * n * 2 / best / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def native_variant(d: Path, cfg: dict, variant: str, args, device: torch.device) -> dict[str, Any]:
    from server.config import NodeSettings
    from server.engine.base import GenerateRequest, SamplingOptions
    from server.engine.native.setup import build_engine

    quant, opts = VARIANTS[variant]
    if device.type != "cuda" and opts.get("decode_graphs") == "auto":
        opts = opts | {"decode_graphs": "eager"}  # exercise the graphs' path on CPU smoke runs
    settings = NodeSettings(engine="native", dtype="bfloat16", quantization=quant,
                            max_model_len=args.input_len + args.output_len + 16, max_num_seqs=1,
                            kv_cache_gb=args.kv_gb, engine_options=opts | {"device": device.type})
    t = time.perf_counter()
    built = build_engine(settings, d, "bench", weights=RandomWeights(cfg, device))
    load_s = time.perf_counter() - t
    core, n = built.core, 0
    gen = torch.Generator().manual_seed(1)

    def run(tokens: int) -> tuple[float, float]:
        """(TTFT, TPOT) of one request: TPOT = (E2EL - TTFT) / (N - 1) within the same run,
        so a hiccup in another run cannot make it negative."""
        nonlocal n
        n += 1
        prompt = torch.randint(100, cfg["vocab_size"], (args.input_len,), generator=gen).tolist()
        core.add_request(GenerateRequest(f"{variant}-{n}", prompt, SamplingOptions(
            max_tokens=tokens, temperature=0.0, ignore_eos=True)))
        sync(device)
        t0 = time.perf_counter()
        produced, first = 0, None
        while core.has_work():
            produced += sum(len(dl.token_ids) for _, dl in core.step())
            if first is None and produced:
                sync(device)
                first = time.perf_counter()
        sync(device)
        end = time.perf_counter()
        if produced != tokens or first is None:
            raise RuntimeError(f"{variant}: produced {produced} of {tokens} tokens")
        return first - t0, (end - first) / max(1, tokens - 1)

    run(4)  # warm-up
    tpots, ttfts = [], []
    for _ in range(args.repeats):
        ttft, tpot = run(args.output_len)
        ttfts.append(ttft)
        tpots.append(tpot)
    graphs = core.runner.graphs
    res = {"variant": variant, "quantization": quant, "weight_bytes": built.info.weight_bytes,
           "load_s": load_s, "ttft_s": statistics.median(ttfts), "tpot_ms": 1e3 * statistics.median(tpots),
           "best_tpot_ms": 1e3 * min(tpots),
           "graphs": None if graphs is None else graphs.replay_mode,
           "graph_replays": 0 if graphs is None else graphs.replays}
    del core, built
    free(device)
    return res


def transformers_baseline(cfg: dict, args, device: torch.device) -> dict[str, Any] | None:
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    hf_cfg = LlamaConfig(**{k: cfg[k] for k in SHAPES[args.shape]}, torch_dtype="bfloat16")
    with torch.device(device):
        model = LlamaForCausalLM(hf_cfg).to(torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(2)

    def run(tokens: int) -> float:
        ids = torch.randint(100, cfg["vocab_size"], (1, args.input_len), generator=gen).to(device)
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                 pad_token_id=0)
        sync(device)
        if out.shape[1] - args.input_len != tokens:
            raise RuntimeError("transformers generated a different number of tokens")
        return time.perf_counter() - t0

    run(4)
    tpots, ttfts = [], []
    for _ in range(args.repeats):
        one, many = run(1), run(args.output_len)
        ttfts.append(one)
        tpots.append((many - one) / (args.output_len - 1))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    free(device)
    return {"variant": "transformers-bf16", "quantization": None, "weight_bytes": weight_bytes,
            "ttft_s": statistics.median(ttfts), "tpot_ms": 1e3 * statistics.median(tpots),
            "best_tpot_ms": 1e3 * min(tpots), "graphs": None, "graph_replays": 0}


def summarize(rows: list[dict], bw: float) -> dict[str, Any]:
    for r in rows:
        r["tok_s"] = 1e3 / r["tpot_ms"]
        r["floor_ms"] = r["weight_bytes"] / (bw * 1e9) * 1e3
        r["pct_of_floor"] = 100.0 * r["floor_ms"] / r["tpot_ms"]
    by = {r["variant"]: r for r in rows}
    goals: dict[str, Any] = {}
    if "bf16" in by:
        goals["bf16_pct_of_floor"] = by["bf16"]["pct_of_floor"]
        goals["bf16_goal_met"] = by["bf16"]["pct_of_floor"] >= 85.0
        if "int4" in by:
            goals["int4_over_bf16"] = by["int4"]["tok_s"] / by["bf16"]["tok_s"]
            goals["int4_goal_met"] = goals["int4_over_bf16"] >= 2.5
        if "transformers-bf16" in by:
            goals["bf16_over_transformers"] = by["bf16"]["tok_s"] / by["transformers-bf16"]["tok_s"]
    return goals


def markdown(rows: list[dict], meta: dict) -> str:
    keys = ["variant", "tok_s", "tpot_ms", "best_tpot_ms", "floor_ms", "pct_of_floor", "ttft_s",
            "weight_bytes", "graphs", "load_s"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                                       for k in keys) + " |")
    lines += ["", f"- device: {meta['device_name']}; bandwidth {meta['bandwidth_gbps']:.0f} GB/s (copy); "
              f"input {meta['args']['input_len']}, output {meta['args']['output_len']}, batch 1",
              *(f"- {k}: {v:.3g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in meta["goals"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-gb", type=float, default=0.5)
    ap.add_argument("--bandwidth-gib", type=float, default=4.0)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu --shape tiny for a smoke run)")
    bw = bandwidth_gbps(device, args.bandwidth_gib)
    print(f"bandwidth {bw:.0f} GB/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = model_dir(args.shape, Path(tmp))
        cfg = json.loads((d / "config.json").read_text())
        for v in args.variants:
            rows.append(native_variant(d, cfg, v, args, device))
            print(rows[-1], flush=True)
    if not args.no_transformers:
        base = transformers_baseline(cfg, args, device)
        if base is not None:
            rows.append(base)
            print(base, flush=True)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args),
            "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "bandwidth_gbps": bw}
    meta["goals"] = summarize(rows, bw)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "native_gpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = markdown(rows, meta)
    (OUT / "native_gpu.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
