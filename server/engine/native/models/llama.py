"""The Llama family as one module: Llama 2/3 (rope scaling), Mistral, Qwen2/2.5 (qkv bias).

Weights arrive already fused by the loader: ``qkv_proj`` = [q; k; v] and ``gate_up_proj`` =
[gate; up] along the output dimension, so a layer is four GEMMs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import ops
from ..attention import AttentionMetadata, paged_attention


@dataclass(slots=True, frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "LlamaConfig":
        heads = cfg["num_attention_heads"]
        rope_scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
        theta = cfg.get("rope_theta") or (rope_scaling or {}).get("rope_theta") or 10000.0
        qwen = cfg.get("model_type") == "qwen2" or "Qwen2ForCausalLM" in cfg.get("architectures", [])
        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"],
            num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", qwen)),
        )


def rope_cos_sin(cfg: LlamaConfig, max_pos: int) -> torch.Tensor:
    """``[max_pos, head_dim]`` fp32: cos then sin of position * inv_freq (HF's rope types)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type") or rs.get("type") or "default"
    if kind == "linear":
        inv_freq = inv_freq / rs["factor"]
    elif kind == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rs)
    elif kind != "default":
        raise ValueError(f"rope scaling {kind!r} is not supported by the native engine")
    t = torch.arange(max_pos, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], -1)


def _llama3_inv_freq(inv_freq: torch.Tensor, rs: dict[str, Any]) -> torch.Tensor:
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_len = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x, residual=None):
        return ops.rms_norm(x, self.weight, self.eps, residual)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, parts: dict[str, nn.Module]):
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = parts["input_layernorm"]
        self.post_attention_layernorm = parts["post_attention_layernorm"]
        self.qkv_proj, self.o_proj = parts["qkv_proj"], parts["o_proj"]
        self.gate_up_proj, self.down_proj = parts["gate_up_proj"], parts["down_proj"]
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.scale = cfg.head_dim ** -0.5

    def forward(self, x, residual, positions, cos_sin, rope_tables,
                kv_cache: torch.Tensor, meta: AttentionMetadata):
        h, residual = self.input_layernorm(x, residual)
        qkv = self.qkv_proj(h)
        t, d = x.shape[0], self.cfg.head_dim
        q, k = ops.rotary_qk(qkv[:, :self.q_size + self.kv_size].view(t, -1, d), self.cfg.num_heads,
                             positions, cos_sin, rope_tables)
        v = qkv[:, self.q_size + self.kv_size:].view(t, -1, d)
        attn = paged_attention(q, k, v, kv_cache, meta, self.scale)
        h = self.o_proj(attn.reshape(t, self.q_size))
        h, residual = self.post_attention_layernorm(h, residual)
        h = self.down_proj(ops.silu_and_mul(self.gate_up_proj(h)))
        return h, residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: LlamaConfig, embed: torch.Tensor, layers: list[DecoderLayer],
                 norm: RMSNorm, lm_head: nn.Module, max_pos: int):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Parameter(embed, requires_grad=False)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.lm_head = lm_head
        self.register_buffer("cos_sin", rope_cos_sin(cfg, max_pos).to(embed.device))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], meta: AttentionMetadata,
                logits_indices: torch.Tensor) -> torch.Tensor:
        """Hidden states of the step's tokens; logits only at ``logits_indices``."""
        x = self.embed_tokens[input_ids]
        residual = None
        tables = ops.rotary_tables(positions, self.cos_sin, x.dtype)
        for layer, kv in zip(self.layers, kv_caches):
            x, residual = layer(x, residual, positions, self.cos_sin, tables, kv, meta)
        x = x[logits_indices]
        residual = residual[logits_indices]
        h, _ = self.norm(x, residual)
        return self.lm_head(h).float()
