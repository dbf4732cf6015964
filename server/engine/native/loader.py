"""Load a Hugging Face Llama-family directory (safetensors, sharded or not) into our model.

Projections are fused on load (q|k|v, gate|up) and quantized on load when asked
(``int8``: per channel; ``int4``: group-wise), or unpacked from AWQ / GPTQ checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kernels import reference as ref

from . import quant
from .linear import DenseLinear, Int4Linear, Int8Linear
from .models import SUPPORTED_ARCHITECTURES
from .models.llama import DecoderLayer, LlamaConfig, LlamaForCausalLM, RMSNorm

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
          "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "half": torch.float16, "float": torch.float32}
ON_LOAD = ("int8", "int4")
PREQUANTIZED = ("awq", "gptq")


@dataclass(slots=True)
class LoadedModel:
    model: LlamaForCausalLM
    config: LlamaConfig
    hf_config: dict[str, Any]
    dtype: torch.dtype
    quantization: str | None
    weight_bytes: int
    load_note: str | None = None  # how GGUF tensors were loaded


@dataclass(slots=True)
class QuantPlan:
    method: str | None  # None, int8, int4, awq, gptq, gguf (Q4_0/Q4_1 blocks kept, the rest dequantized)
    group_size: int = 128
    zero_offset: int = 1  # GPTQ v1 stores zero - 1
    lm_head: bool = False


def read_config(model_dir: Path) -> dict[str, Any]:
    cfg = json.loads((model_dir / "config.json").read_text())
    archs = cfg.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ValueError(f"architecture {archs or cfg.get('model_type')} is not supported by the "
                         f"native engine (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    return cfg


def resolve_dtype(requested: str, cfg: dict[str, Any], device: torch.device) -> torch.dtype:
    if requested and requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype {requested!r} is not one of bfloat16, float16, float32")
        return DTYPES[requested]
    dt = DTYPES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"), torch.bfloat16)
    # CPUs have bf16 (AMX/AVX512) paths but slow fp16 GEMMs.
    return torch.bfloat16 if device.type == "cpu" and dt == torch.float16 else dt


def plan_quantization(requested: str | None, cfg: dict[str, Any], options: dict[str, Any]) -> QuantPlan:
    qc = cfg.get("quantization_config") or {}
    ckpt = (qc.get("quant_method") or "").lower() or None
    requested = (requested or "").lower() or None
    if requested in ("none", "auto"):  # "auto" left unresolved by the node: the checkpoint's own
        requested = None
    if ckpt and ckpt not in PREQUANTIZED:
        raise ValueError(f"checkpoint quantization {ckpt!r} is not supported by the native engine")
    if ckpt:
        if requested and requested != ckpt:
            raise ValueError(f"checkpoint is {ckpt}-quantized; --quantization {requested} does not apply")
        if int(qc.get("bits", 4)) != 4:
            raise ValueError(f"{ckpt} with {qc.get('bits')} bits is not supported (4 only)")
        if ckpt == "awq" and not qc.get("zero_point", True):
            raise ValueError("AWQ without zero points is not supported")
        if ckpt == "awq" and str(qc.get("version", "gemm")).lower() != "gemm":
            raise ValueError(f"AWQ version {qc.get('version')!r} is not supported (gemm only)")
        v2 = str(qc.get("checkpoint_format", "gptq")).lower() == "gptq_v2"
        return QuantPlan(ckpt, int(qc.get("group_size", 128)), 0 if v2 else 1)
    if requested in PREQUANTIZED:
        raise ValueError(f"--quantization {requested} needs a {requested} checkpoint; this one is not")
    if requested and requested not in ON_LOAD:
        raise ValueError(f"quantization {requested!r} is not supported by the native engine "
                         f"(int8, int4, awq, gptq)")
    group = int(options.get("int4_group_size", 128))
    if group not in (32, 64, 128):
        raise ValueError("int4_group_size must be 32, 64 or 128")
    return QuantPlan(requested, group, lm_head=bool(requested) and options.get("quantize_lm_head", True))


class Weights:
    """Lazy access to every tensor of the checkpoint's safetensors files."""

    def __init__(self, model_dir: Path):
        from safetensors import safe_open

        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ValueError(f"no .safetensors files in {model_dir}")
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise ValueError(f"checkpoint has no tensor {name!r}")
        return self._where[name].get_tensor(name)

    def maybe(self, name: str) -> torch.Tensor | None:
        return self.get(name) if name in self else None


def _int4_module(w: quant.Int4Weight, bias, dtype, device) -> Int4Linear:
    perm = None if w.perm is None else w.perm.to(device)
    mins = None if w.mins is None else w.mins.to(device)
    return Int4Linear(ref.pack_int4(w.q).to(device), w.scales.to(device), w.zeros.to(device),
                      w.group_size, bias, dtype, perm, mins)


class _Concat(nn.Module):
    """Unfusable quantized parts (e.g. GPTQ act-order with different permutations)."""

    def __init__(self, parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    @property
    def weight_bytes(self) -> int:
        return sum(p.weight_bytes for p in self.parts)

    def forward(self, x):
        return torch.cat([p(x) for p in self.parts], dim=-1)


def build_linear(ws: Weights, names: list[str], plan: QuantPlan, dtype: torch.dtype,
                 device: torch.device, quantize: bool = True) -> nn.Module:
    """One (fused) projection from checkpoint tensors ``{name}.weight`` etc."""
    biases = [ws.maybe(n + ".bias") for n in names]
    bias = None if all(b is None for b in biases) else torch.cat(
        [b if b is not None else torch.zeros(_out_features(ws, n, plan)) for b, n in zip(biases, names)])
    bias = None if bias is None else bias.to(device, dtype)
    method = plan.method if quantize else None
    if method in PREQUANTIZED:
        parts = [_load_prequantized(ws, n, plan) for n in names]
        fused = quant.concat_int4(parts)
        if fused is not None:
            return _int4_module(fused, bias, dtype, device)
        mods = [_int4_module(p, b, dtype, device) for p, b in zip(parts, biases)]
        return _Concat(mods)
    if method == "gguf":
        parts = [ws.int4(n + ".weight") for n in names]
        fused = quant.concat_int4(parts) if all(p is not None for p in parts) else None
        if fused is not None:
            return _int4_module(fused, bias, dtype, device)
        method = None  # a type with no exact int4 layout: dequantized below
    w = torch.cat([ws.get(n + ".weight") for n in names]).to(device)
    if method == "int8":
        q, s = quant.quantize_int8(w)
        return Int8Linear(q, s, bias, dtype)
    if method == "int4":
        return _int4_module(quant.quantize_int4(w, plan.group_size), bias, dtype, device)
    return DenseLinear(w.to(dtype), bias)


def _out_features(ws: Weights, name: str, plan: QuantPlan) -> int:
    if name + ".weight" in ws:
        return ws.get(name + ".weight").shape[0]
    return ws.get(name + ".scales").shape[1]


def _load_prequantized(ws: Weights, name: str, plan: QuantPlan) -> quant.Int4Weight:
    qw, qz, sc = ws.get(name + ".qweight"), ws.get(name + ".qzeros"), ws.get(name + ".scales")
    if plan.method == "awq":
        return quant.from_awq(qw, qz, sc, plan.group_size)
    return quant.from_gptq(qw, qz, sc, ws.maybe(name + ".g_idx"), plan.group_size, plan.zero_offset)


def load_model(model_dir: Path, dtype_name: str = "auto", quantization: str | None = None,
               device: str | torch.device = "cpu", max_model_len: int | None = None,
               options: dict[str, Any] | None = None,
               progress: Callable[[str], None] | None = None,
               weights: Weights | None = None) -> LoadedModel:
    """``weights``: where tensors come from, if not the directory's safetensors (anything with
    ``Weights``' ``get`` / ``maybe`` / ``in``; the GPU benchmark generates them on the device)."""
    device = torch.device(device)
    hf = read_config(model_dir)
    cfg = LlamaConfig.from_hf(hf)
    dtype = resolve_dtype(dtype_name, hf, device)
    plan = plan_quantization(quantization, hf, options or {})
    ws = weights if weights is not None else Weights(model_dir)
    if hasattr(ws, "int4") and plan.method is None:  # a GGUF file, served as its blocks
        plan = QuantPlan("gguf", 32)
    layers = []
    for i in range(cfg.num_layers):
        if progress and i % 8 == 0:
            progress(f"loading layer {i + 1}/{cfg.num_layers}")
        layers.append(_build_layer(ws, cfg, i, plan, dtype, device))
    embed = ws.get("model.embed_tokens.weight").to(device, dtype)
    head_name = "lm_head" if "lm_head.weight" in ws and not cfg.tie_word_embeddings else "model.embed_tokens"
    lm_head = build_linear(ws, [head_name], plan, dtype, device, quantize=plan.lm_head)
    norm = RMSNorm(ws.get("model.norm.weight").to(device, dtype), cfg.rms_norm_eps)
    max_pos = max(max_model_len or 0, cfg.max_position_embeddings)
    model = LlamaForCausalLM(cfg, embed, layers, norm, lm_head, max_pos).eval()
    if device.type == "cpu" and not option_off((options or {}).get("cpu_prepack", True)):
        for m in model.modules():
            if isinstance(m, DenseLinear):
                m.prepack_onednn()
    weight_bytes = embed.numel() * embed.element_size() + _linear_bytes(model)
    if head_name == "model.embed_tokens" and isinstance(lm_head, DenseLinear):
        weight_bytes -= embed.numel() * embed.element_size()  # tied: stored once
    if plan.method == "gguf":
        note, quantization = gguf_load_note(model, ws, dtype)
        return LoadedModel(model, cfg, hf, dtype, quantization, weight_bytes, note)
    return LoadedModel(model, cfg, hf, dtype, plan.method, weight_bytes)


def gguf_load_note(model: nn.Module, ws: Any, dtype: torch.dtype) -> tuple[str, str]:
    """(what was loaded how, the quantization name) for a model built from GGUF tensors."""
    from collections import Counter

    direct = sum(isinstance(m, Int4Linear) for m in model.modules())
    types = Counter(ws.type_of(n) for n in ws.keys())
    kept = {t: c for t, c in types.items() if t in ("Q4_0", "Q4_1")}
    floats = {t: c for t, c in types.items() if t in ("F32", "F16", "BF16")}
    other = {t: c for t, c in types.items() if t not in kept and t not in floats}
    dt = str(dtype).removeprefix("torch.")
    parts = []
    if kept:
        parts.append(f"GGUF {'+'.join(sorted(kept))} blocks loaded directly into {direct} int4 g32 layers "
                     f"({sum(kept.values())} tensors, no float round trip)")
    if other:  # Q8_0 (per-32 scales vs the per-channel int8 layer), K-quants
        parts.append(f"dequantized to {dt} (no exact int4 layout): "
                     + ", ".join(f"{c} {t}" for t, c in sorted(other.items())))
    if floats:
        parts.append(f"float tensors as {dt}: " + ", ".join(f"{c} {t}" for t, c in sorted(floats.items())))
    main = max(types, key=lambda t: (t not in ("F32", "F16", "BF16"), types[t]))
    return "; ".join(parts), f"gguf-{main.lower()}"


def option_off(value: Any) -> bool:
    """An engine option switched off: false/0/None, or a string such as "off" or "no"."""
    if isinstance(value, str):
        return value.strip().lower() in ("0", "false", "no", "off", "none")
    return not value


def _build_layer(ws: Weights, cfg: LlamaConfig, i: int, plan: QuantPlan, dtype, device) -> DecoderLayer:
    p = f"model.layers.{i}."
    attn, mlp = p + "self_attn.", p + "mlp."
    parts = {
        "input_layernorm": RMSNorm(ws.get(p + "input_layernorm.weight").to(device, dtype), cfg.rms_norm_eps),
        "post_attention_layernorm": RMSNorm(ws.get(p + "post_attention_layernorm.weight").to(device, dtype),
                                            cfg.rms_norm_eps),
        "qkv_proj": build_linear(ws, [attn + "q_proj", attn + "k_proj", attn + "v_proj"], plan, dtype, device),
        "o_proj": build_linear(ws, [attn + "o_proj"], plan, dtype, device),
        "gate_up_proj": build_linear(ws, [mlp + "gate_proj", mlp + "up_proj"], plan, dtype, device),
        "down_proj": build_linear(ws, [mlp + "down_proj"], plan, dtype, device),
    }
    return DecoderLayer(cfg, parts)


def _linear_bytes(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        if isinstance(m, (DenseLinear, Int8Linear, Int4Linear)):
            total += m.weight_bytes
        elif isinstance(m, RMSNorm):
            total += m.weight.numel() * m.weight.element_size()
    return total
