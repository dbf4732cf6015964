"""Group-wise int4 dequant-matmul (Triton): ``x @ dequant(packed, scales, zeros).T``.

Reference: ``kernels.reference.int4_matmul``; layout in ``kernels/reference.py``
(``uint8[N, K/2]``, low nibble = even k; ``scales/zeros[N, K/group]``). The K loop steps
one group at a time, so each tile needs a single scale and zero per output column.
GEMV for decode, ``tl.dot`` GEMM for prefill, as in ``int8_matmul``.
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
def _load_w4(p_ptr, s_ptr, z_ptr, n, k, N, K, n_groups, g, GROUP: tl.constexpr):
    """Dequantized fp32 tile for outputs n (any shape) and inputs k of group g."""
    mask = (n < N) & (k < K)
    byte = tl.load(p_ptr + n * (K // 2) + k // 2, mask=mask, other=0).to(tl.int32)
    q = (byte >> ((k % 2) * 4)) & 0xF
    s = tl.load(s_ptr + n * n_groups + g, mask=n < N, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + n * n_groups + g, mask=n < N, other=0).to(tl.float32)
    return (q.to(tl.float32) - z) * s


@triton.jit
def _int4_gemv_kernel(x_ptr, p_ptr, s_ptr, z_ptr, out_ptr, N, K, n_groups,
                      BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    row = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for g in range(0, n_groups):
        k = g * GROUP + tl.arange(0, GROUP)
        x = tl.load(x_ptr + row * K + k).to(tl.float32)
        w = _load_w4(p_ptr, s_ptr, z_ptr, n[:, None], k[None, :], N, K, n_groups, g, GROUP)
        acc += tl.sum(w * x[None, :], axis=1)
    tl.store(out_ptr + row * N + n, acc.to(out_ptr.dtype.element_ty), mask=n < N)


@triton.jit
def _int4_gemm_kernel(x_ptr, p_ptr, s_ptr, z_ptr, out_ptr, M, N, K, n_groups,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr,
                      DOT_F32: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for g in range(0, n_groups):
        k = g * GROUP + tl.arange(0, GROUP)
        x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=m[:, None] < M, other=0.0)
        w = _load_w4(p_ptr, s_ptr, z_ptr, n[None, :], k[:, None], N, K, n_groups, g, GROUP)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), w)
        else:
            acc += tl.dot(x, w.to(x.dtype))
    tl.store(out_ptr + m[:, None] * N + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(m[:, None] < M) & (n[None, :] < N))


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                group_size: int) -> torch.Tensor:
    m, k = x.shape
    n = packed.shape[0]
    if packed.shape[1] * 2 != k or k % group_size or scales.shape != (n, k // group_size) \
            or zeros.shape != scales.shape or group_size < 16:
        raise ValueError("int4_matmul expects x [M, K], packed uint8 [N, K/2], scales/zeros [N, K/group]")
    x = x.contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    groups = k // group_size
    if m <= GEMV_MAX_ROWS:
        _int4_gemv_kernel[(m, triton.cdiv(n, 64))](x, packed, scales, zeros, out, n, k, groups,
                                                   BLOCK_N=64, GROUP=group_size)
    else:
        _int4_gemm_kernel[(triton.cdiv(m, 32), triton.cdiv(n, 64))](
            x, packed, scales, zeros, out, m, n, k, groups, BLOCK_M=32, BLOCK_N=64, GROUP=group_size,
            DOT_F32=_INTERPRET or x.dtype == torch.float32)
    return out
