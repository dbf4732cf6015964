"""PyTorch references for every kernel in ``kernels/`` (torch only, no triton).

These define what each Triton kernel must compute, and they are what the native engine runs
on CPU. Shapes follow the engine's flattened-token layout: activations are ``[T, ...]``
with T the number of tokens in the step.

Paged KV cache layout (per layer, one tensor for K and one for V)::

    cache[num_blocks, block_size, num_kv_heads, head_dim]
    token i of a sequence lives at cache[block_table[i // block_size], i % block_size]

Int4 weights are packed two per byte along K (low nibble = even k) as ``uint8[N, K // 2]``
with group-wise ``scales[N, K // group]`` and integer ``zeros[N, K // group]``:
``w[n, k] = (q[n, k] - zeros[n, k // group]) * scales[n, k // group]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``residual += x; out = norm(residual) * weight``; returns (out, new residual).

    Computed in fp32 and cast back like Hugging Face's LlamaRMSNorm. Without a residual the
    second output is x itself.
    """
    if residual is not None:
        x = x + residual
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype), x


def rotary_tables(positions: torch.Tensor, cos_sin: torch.Tensor,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-width cos and sin ``[T, 1, D]`` for the step's positions, in the activation dtype."""
    half = cos_sin.shape[-1] // 2
    cs = cos_sin[positions]
    cos = torch.cat([cs[:, :half], cs[:, :half]], -1).to(dtype)[:, None, :]
    sin = torch.cat([cs[:, half:], cs[:, half:]], -1).to(dtype)[:, None, :]
    return cos, sin


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = q.shape[-1] // 2

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., :half], x[..., half:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    return rot(q), rot(k)


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
           cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half (GPT-NeoX / Hugging Face Llama) rotary embedding.

    q ``[T, Hq, D]``, k ``[T, Hk, D]``, positions ``[T]``, cos_sin ``[max_pos, D]`` fp32
    with cos in the first D/2 columns and sin in the rest.
    """
    cos, sin = rotary_tables(positions, cos_sin, q.dtype)
    return apply_rotary(q, k, cos, sin)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``[T, 2I] -> [T, I]``: silu(gate) * up, gate first (the fused gate_up projection)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           scale: float) -> torch.Tensor:
    """One query token per sequence against its paged context.

    q ``[B, Hq, D]``; block_tables ``[B, max_blocks]`` (padding entries may be any valid
    block id); context_lens ``[B]``. Returns ``[B, Hq, D]``.
    """
    b, hq, d = q.shape
    bs, hk = k_cache.shape[1], k_cache.shape[2]
    max_len = block_tables.shape[1] * bs
    k = k_cache[block_tables].view(b, max_len, hk, d).transpose(1, 2)
    v = v_cache[block_tables].view(b, max_len, hk, d).transpose(1, 2)
    mask = torch.arange(max_len, device=q.device)[None, :] < context_lens[:, None]
    out = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=mask[:, None, None, :],
                                         scale=scale, enable_gqa=hq != hk)
    return out[:, :, 0, :]


def int8_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Per-output-channel weight-only int8: ``x @ (qweight * scales[:, None]).T``."""
    return F.linear(x, qweight.to(x.dtype)) * scales.to(x.dtype)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """``uint8[N, K/2] -> uint8[N, K]`` with values 0..15 (low nibble first)."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack([low, high], dim=-1).view(packed.shape[0], -1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` values 0..15 -> ``uint8[N, K/2]``."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def dequant_int4(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, dtype: torch.dtype) -> torch.Tensor:
    q = unpack_int4(packed).to(torch.float32)
    n, k = q.shape
    q = q.view(n, k // group_size, group_size)
    w = (q - zeros.float()[..., None]) * scales.float()[..., None]
    return w.view(n, k).to(dtype)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                group_size: int) -> torch.Tensor:
    return F.linear(x, dequant_int4(packed, scales, zeros, group_size, x.dtype))
