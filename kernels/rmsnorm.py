"""Fused residual add + RMSNorm (Triton). Reference: ``kernels.reference.rms_norm``.

One program per token row; the whole hidden dimension fits in one block (hidden <= 16k).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n_cols, eps,
                     HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(r.dtype)
        tl.store(res_out_ptr + row * n_cols + cols, x, mask=mask)
    h = x.to(tl.float32)
    var = tl.sum(h * h, axis=0) / n_cols
    h = h * tl.rsqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    # round to the input dtype before the weight product, like HF; then multiply in fp32
    # (exact for a product of two bf16/fp16 values, rounded once at the store)
    y = w * h.to(x.dtype).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(f"rms_norm expects x [T, H] and weight [H], got {tuple(x.shape)}, {tuple(weight.shape)}")
    x = x.contiguous()
    out = torch.empty_like(x)
    if residual is None:
        res_out, res_in = x, x
    else:
        res_in = residual.contiguous()
        res_out = torch.empty_like(x)
    block = triton.next_power_of_2(x.shape[1])
    _rms_norm_kernel[(x.shape[0],)](x, res_in, weight, out, res_out, x.shape[1], eps,
                                    HAS_RESIDUAL=residual is not None, BLOCK=block)
    return out, res_out
