"""Attention over the paged KV cache, with its metadata passed explicitly.

A step's tokens are flattened: ``num_decodes`` single-token sequences first, then prefill
chunks. New K/V are written to their slots first, then decodes read the paged cache in one
batched call and each prefill chunk attends to its context (cached prefix + itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import ops


@dataclass(slots=True)
class PrefillChunk:
    q_start: int  # first row of this chunk in the flattened batch
    q_len: int
    ctx_len: int  # tokens attended to, including this chunk (num_computed + q_len)
    block_table: torch.Tensor  # [blocks covering ctx_len]


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot of each new token
    num_decodes: int = 0
    block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks]
    context_lens: torch.Tensor | None = None  # [num_decodes]
    decode_mask: torch.Tensor | None = None  # [num_decodes, 1, 1, max_blocks * block_size]
    prefills: list[PrefillChunk] = field(default_factory=list)


# Below this many (padded) context tokens in a decode batch, CPU attention runs on one thread:
# waking the other OpenMP threads (passive waiting, see native/__init__.py) costs more than
# the work. Measured on 2 cores: 30 us against 125 us at batch 1 with 160 tokens; the two
# are even near 4000 tokens.
SERIAL_DECODE_MAX_TOKENS = 3072


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    _, nb, bs, hk, d = kv_cache.shape
    flat = kv_cache.view(2, nb * bs, hk, d)
    flat[0].index_copy_(0, slot_mapping, k)
    flat[1].index_copy_(0, slot_mapping, v)


def _decode_cpu(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """The reference's math with one gather for K and V and the step's shared mask."""
    b, hq, d = q.shape
    hk = kv_cache.shape[3]
    # index_select, not kv_cache[:, tables]: advanced indexing costs ~25x more here (~100 us a
    # layer at batch 1 on 2 cores, against ~4 us)
    blocks = kv_cache.index_select(1, meta.block_tables.view(-1))
    kv = blocks.view(2, b, -1, hk, d).transpose(2, 3)
    threads = torch.get_num_threads()
    serial = threads > 1 and kv.shape[1] * kv.shape[3] < SERIAL_DECODE_MAX_TOKENS
    if serial:
        torch.set_num_threads(1)
    try:
        out = F.scaled_dot_product_attention(q[:, :, None, :], kv[0], kv[1], attn_mask=meta.decode_mask,
                                             scale=scale, enable_gqa=hq != hk)
    finally:
        if serial:
            torch.set_num_threads(threads)
    return out[:, :, 0, :]


def _decode(q, kv_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    if ops.use_triton(q):
        return ops.paged_attention_decode(q, kv_cache[0], kv_cache[1], meta.block_tables,
                                          meta.context_lens, scale)
    return _decode_cpu(q, kv_cache, meta, scale)


def _prefill(q, k, v, k_cache, v_cache, p: PrefillChunk, scale: float) -> torch.Tensor:
    hq, hk = q.shape[1], k.shape[1]
    qs = q[p.q_start:p.q_start + p.q_len].transpose(0, 1)[None]
    if p.ctx_len == p.q_len:  # nothing cached before this chunk: attend to itself
        ks = k[p.q_start:p.q_start + p.q_len]
        vs = v[p.q_start:p.q_start + p.q_len]
        mask, causal = None, True
    else:
        d = k.shape[2]
        ks = k_cache[p.block_table].view(-1, hk, d)[:p.ctx_len]
        vs = v_cache[p.block_table].view(-1, hk, d)[:p.ctx_len]
        mask = torch.ones(p.q_len, p.ctx_len, dtype=torch.bool, device=q.device)
        mask = mask.tril(diagonal=p.ctx_len - p.q_len)
        causal = False
    out = F.scaled_dot_product_attention(qs, ks.transpose(0, 1)[None], vs.transpose(0, 1)[None],
                                         attn_mask=mask, is_causal=causal, scale=scale,
                                         enable_gqa=hq != hk)
    return out[0].transpose(0, 1)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q ``[T, Hq, D]``, k/v ``[T, Hk, D]`` (already rotated) -> ``[T, Hq, D]``."""
    write_kv(kv_cache, k, v, meta.slot_mapping)
    nd = meta.num_decodes
    if nd and not meta.prefills:
        return _decode(q, kv_cache, meta, scale)
    out = torch.empty_like(q)
    if nd:
        out[:nd] = _decode(q[:nd], kv_cache, meta, scale)
    for p in meta.prefills:
        out[p.q_start:p.q_start + p.q_len] = _prefill(q, k, v, kv_cache[0], kv_cache[1], p, scale)
    return out
