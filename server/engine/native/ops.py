"""Kernel dispatch: Triton kernels on CUDA, PyTorch references (or torch's own ops) on CPU.

The engine calls only these functions, so swapping a kernel touches one line here.
"""

from __future__ import annotations

import functools

import torch

from kernels import reference as ref


@functools.cache
def triton_available() -> bool:
    """A CUDA device and an importable Triton: the kernels in ``kernels/`` can run."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda and triton_available()


def rms_norm(x, weight, eps, residual=None):
    if use_triton(x):
        from kernels.rmsnorm import rms_norm as k
        return k(x, weight, eps, residual)
    return ref.rms_norm(x, weight, eps, residual)


def rotary(q, k, positions, cos_sin, tables=None):
    """``tables``: the step's (cos, sin) from ``rotary_tables``, shared by every layer on CPU."""
    if use_triton(q):
        from kernels.rotary import rotary as kr
        return kr(q, k, positions, cos_sin)
    if tables is None:
        return ref.rotary(q, k, positions, cos_sin)
    return ref.apply_rotary(q, k, *tables)


def rotary_qk(qk, num_q_heads, positions, cos_sin, tables=None):
    """Rotary on q and k packed as ``[T, Hq + Hk, D]`` (one pass on CPU); returns (q, k)."""
    if tables is None or use_triton(qk):
        return rotary(qk[:, :num_q_heads], qk[:, num_q_heads:], positions, cos_sin, tables)
    cos, sin = tables
    half = qk.shape[-1] // 2
    rotated = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin
    return rotated[:, :num_q_heads], rotated[:, num_q_heads:]


def rotary_tables(positions, cos_sin, dtype):
    if positions.is_cuda and triton_available():
        return None  # the Triton kernel reads cos_sin directly
    return ref.rotary_tables(positions, cos_sin, dtype)


def silu_and_mul(x):
    if use_triton(x):
        from kernels.silu_mul import silu_and_mul as k
        return k(x)
    return ref.silu_and_mul(x)


def paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale):
    if use_triton(q):
        from kernels.paged_attention import paged_attention_decode as k
        return k(q, k_cache, v_cache, block_tables, context_lens, scale)
    return ref.paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale)
