"""SiLU-and-multiply (Triton): ``[T, 2I] -> [T, I]``. Reference: ``kernels.reference.silu_and_mul``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * 2 * inter + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * inter + inter + cols, mask=mask, other=0.0)
    # silu in fp32, rounded to the input dtype before the product, like F.silu(gate) * up;
    # the product itself in fp32 with one rounding at the store
    act = (gate / (1.0 + tl.exp(-gate))).to(up.dtype).to(tl.float32)
    tl.store(out_ptr + row * inter + cols, (act * up.to(tl.float32)).to(up.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor, block: int = 1024) -> torch.Tensor:
    if x.dim() != 2 or x.shape[1] % 2:
        raise ValueError(f"silu_and_mul expects [T, 2I], got {tuple(x.shape)}")
    x = x.contiguous()
    inter = x.shape[1] // 2
    out = torch.empty((x.shape[0], inter), dtype=x.dtype, device=x.device)
    block = min(block, triton.next_power_of_2(inter))
    _silu_mul_kernel[(x.shape[0], triton.cdiv(inter, block))](x, out, inter, BLOCK=block)
    return out
