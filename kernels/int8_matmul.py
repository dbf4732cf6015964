"""Weight-only int8 matmul (Triton): ``x @ (q * scales[:, None]).T``.

Reference: ``kernels.reference.int8_matmul``. Two shapes:

- GEMV (decode, few rows): one program per (row, block of N outputs); the int8 weight is
  read once per row, upcast in registers. Memory-bound: reads 1 byte per weight.
- GEMM (prefill): tiles of [BLOCK_M, BLOCK_N] with ``tl.dot`` over K, weight tiles
  dequantized to the activation dtype in registers.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

GEMV_MAX_ROWS = 4
# Triton's CPU interpreter computes bf16/fp16 tl.dot on raw bits (numpy has no bf16): under
# it the GEMM tiles are upcast to fp32 first. On a GPU the dot runs in the input dtype.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _int8_gemv_kernel(x_ptr, w_ptr, s_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        x = tl.load(x_ptr + row * K + k, mask=kmask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=nmask[:, None] & kmask[None, :], other=0)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    s = tl.load(s_ptr + n, mask=nmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + n, (acc * s).to(out_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def _int8_gemm_kernel(x_ptr, w_ptr, s_ptr, out_ptr, M, N, K,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      DOT_F32: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=(m[:, None] < M) & (k[None, :] < K), other=0.0)
        w = tl.load(w_ptr + n[None, :] * K + k[:, None], mask=(n[None, :] < N) & (k[:, None] < K), other=0)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32))
        else:
            acc += tl.dot(x, w.to(x.dtype))
    s = tl.load(s_ptr + n, mask=n < N, other=0.0).to(tl.float32)
    acc = acc * s[None, :]
    tl.store(out_ptr + m[:, None] * N + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(m[:, None] < M) & (n[None, :] < N))


def int8_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2 or qweight.dim() != 2 or x.shape[1] != qweight.shape[1] or scales.shape != (qweight.shape[0],):
        raise ValueError("int8_matmul expects x [M, K], qweight int8 [N, K], scales [N]")
    x, qweight = x.contiguous(), qweight.contiguous()
    m, k = x.shape
    n = qweight.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m <= GEMV_MAX_ROWS:
        _int8_gemv_kernel[(m, triton.cdiv(n, 64))](x, qweight, scales, out, n, k, BLOCK_N=64, BLOCK_K=128)
    else:
        grid = (triton.cdiv(m, 32), triton.cdiv(n, 64))
        _int8_gemm_kernel[grid](x, qweight, scales, out, m, n, k, BLOCK_M=32, BLOCK_N=64, BLOCK_K=64,
                                DOT_F32=_INTERPRET or x.dtype == torch.float32)
    return out
