"""Rotary embedding, rotate-half layout (Triton). Reference: ``kernels.reference.rotary``.

One program per (token, head) over q heads then k heads; cos/sin come from the fp32
``cos_sin[max_pos, D]`` cache (cos in the first D/2 columns).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotary_kernel(x_ptr, out_ptr, pos_ptr, cs_ptr, n_heads, HALF: tl.constexpr, BLOCK: tl.constexpr):
    tok = tl.program_id(0)
    head = tl.program_id(1)
    i = tl.arange(0, BLOCK)
    mask = i < HALF
    pos = tl.load(pos_ptr + tok)
    cos = tl.load(cs_ptr + pos * 2 * HALF + i, mask=mask, other=0.0)
    sin = tl.load(cs_ptr + pos * 2 * HALF + HALF + i, mask=mask, other=0.0)
    base = (tok * n_heads + head) * 2 * HALF
    x1 = tl.load(x_ptr + base + i, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + base + HALF + i, mask=mask, other=0.0)
    dt = x1.dtype
    # cos/sin are rounded to the activation dtype first, as the reference (and HF) does;
    # the arithmetic is fp32 with one rounding at the store
    cos = cos.to(dt).to(tl.float32)
    sin = sin.to(dt).to(tl.float32)
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    tl.store(out_ptr + base + i, (a * cos - b * sin).to(dt), mask=mask)
    tl.store(out_ptr + base + HALF + i, (b * cos + a * sin).to(dt), mask=mask)


def _rotate(x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    t, h, d = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    half = d // 2
    _rotary_kernel[(t, h)](x, out, positions, cos_sin, h, HALF=half, BLOCK=triton.next_power_of_2(half))
    return out


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
           cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if q.dim() != 3 or k.dim() != 3 or q.shape[2] % 2 or cos_sin.shape[1] != q.shape[2]:
        raise ValueError("rotary expects q [T, Hq, D], k [T, Hk, D], cos_sin [P, D] with D even")
    positions = positions.contiguous()
    cos_sin = cos_sin.float().contiguous()
    return _rotate(q, positions, cos_sin), _rotate(k, positions, cos_sin)
