"""Paged-attention decode (Triton). Reference: ``kernels.reference.paged_attention_decode``.

One program per (sequence, query head). It walks the sequence's block table one KV block
at a time with an online softmax (running max ``m``, normaliser ``l``), so the context is
never materialised. GQA: query head h reads KV head ``h // (Hq // Hk)``.

    k_cache[num_blocks, BLOCK_SIZE, Hk, D]     block_tables[B, max_blocks]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, out_ptr, bt_ptr, lens_ptr, scale, max_blocks,
                         num_q_heads, num_kv_heads, head_dim,
                         BLOCK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // (num_q_heads // num_kv_heads)
    d = tl.arange(0, BLOCK_D)
    dmask = d < head_dim
    q = tl.load(q_ptr + (b * num_q_heads + h) * head_dim + d, mask=dmask, other=0.0).to(tl.float32)
    ctx = tl.load(lens_ptr + b)
    t = tl.arange(0, BLOCK_T)
    m = tl.full((), float("-inf"), tl.float32)
    l = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for j in range(0, tl.cdiv(ctx, BLOCK_SIZE)):
        phys = tl.load(bt_ptr + b * max_blocks + j).to(tl.int64)
        pos = j * BLOCK_SIZE + t
        tmask = (t < BLOCK_SIZE) & (pos < ctx)
        offs = ((phys * BLOCK_SIZE + t[:, None]) * num_kv_heads + kvh) * head_dim + d[None, :]
        kv_mask = tmask[:, None] & dmask[None, :]
        k = tl.load(k_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1) * scale
        s = tl.where(tmask, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        v = tl.load(v_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        l = l * alpha + tl.sum(p, axis=0)
        m = m_new
    out = acc / l
    tl.store(out_ptr + (b * num_q_heads + h) * head_dim + d, out.to(out_ptr.dtype.element_ty), mask=dmask)


def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           scale: float) -> torch.Tensor:
    b, hq, d = q.shape
    nb, bs, hk, dk = k_cache.shape
    if dk != d or v_cache.shape != k_cache.shape or hq % hk or block_tables.shape[0] != b:
        raise ValueError("paged_attention_decode: inconsistent q / cache / block table shapes")
    q = q.contiguous()
    block_tables = block_tables.to(torch.int32).contiguous()
    context_lens = context_lens.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    _paged_decode_kernel[(b, hq)](q, k_cache, v_cache, out, block_tables, context_lens, scale,
                                  block_tables.shape[1], hq, hk, d, BLOCK_SIZE=bs,
                                  BLOCK_D=triton.next_power_of_2(d),
                                  BLOCK_T=triton.next_power_of_2(bs))
    return out
