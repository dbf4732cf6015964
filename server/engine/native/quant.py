"""Weight quantization: on-load int8/int4, and unpacking AWQ / GPTQ 4-bit checkpoints.

Everything converges on one canonical 4-bit form, ``Int4Weight``: values ``q[N, K]`` in
0..15, group-wise ``scales[N, K/g]`` and integer ``zeros[N, K/g]``, meaning
``w = (q - zero) * scale``, plus a per-group float ``mins`` where the format has one (GGUF
Q4_1: ``w = q * scale + min``); an optional ``perm`` (GPTQ act-order) says which input channel
each column of q reads. ``N`` is the output dimension, as in ``nn.Linear.weight``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# AWQ packs the 8 nibbles of an int32 in this column order.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


@dataclass(slots=True)
class Int4Weight:
    q: torch.Tensor  # uint8 [N, K], 0..15
    scales: torch.Tensor  # float [N, G]
    zeros: torch.Tensor  # uint8 [N, G]
    group_size: int
    perm: torch.Tensor | None = None
    mins: torch.Tensor | None = None  # float [N, G], added after scaling

    def dequantize(self) -> torch.Tensor:
        n, k = self.q.shape
        q = self.q.float().view(n, k // self.group_size, self.group_size)
        w = (q - self.zeros.float()[..., None]) * self.scales.float()[..., None]
        if self.mins is not None:
            w = w + self.mins.float()[..., None]
        w = w.view(n, k)
        if self.perm is not None:  # back to the original input order
            out = torch.empty_like(w)
            out[:, self.perm] = w
            w = out
        return w


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel: returns (int8 [N, K], fp32 scales [N])."""
    w = w.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(w: torch.Tensor, group_size: int) -> Int4Weight:
    """Asymmetric min/max per group of ``group_size`` input channels."""
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group size {group_size}")
    wg = w.float().view(n, k // group_size, group_size)
    lo = wg.amin(-1).clamp(max=0.0)
    hi = wg.amax(-1).clamp(min=0.0)
    scales = ((hi - lo) / 15.0).clamp(min=1e-8)
    zeros = torch.round(-lo / scales).clamp(0, 15)
    q = torch.round(wg / scales[..., None] + zeros[..., None]).clamp(0, 15)
    return Int4Weight(q.view(n, k).to(torch.uint8), scales, zeros.to(torch.uint8), group_size)


def _unpack_int32(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Split each int32 into 8 nibbles (nibble i at bits 4i..4i+3) along ``dim``."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    x = packed.to(torch.int32)
    if dim == 1:
        out = (x[:, :, None] >> shifts) & 0xF
        return out.reshape(x.shape[0], -1)
    out = (x[:, None, :] >> shifts[None, :, None]) & 0xF
    return out.reshape(-1, x.shape[1])


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
             group_size: int) -> Int4Weight:
    """AWQ GEMM layout: qweight int32 [K, N/8], qzeros int32 [K/g, N/8], scales [K/g, N]."""
    order = torch.arange(qweight.shape[1] * 8).view(-1, 8)[:, list(AWQ_REVERSE_ORDER)].reshape(-1)
    q = _unpack_int32(qweight, 1)[:, order]  # [K, N]
    z = _unpack_int32(qzeros, 1)[:, order]  # [G, N]
    return Int4Weight(q.t().contiguous().to(torch.uint8), scales.float().t().contiguous(),
                      z.t().contiguous().to(torch.uint8), group_size)


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
              g_idx: torch.Tensor | None, group_size: int, zero_offset: int = 1) -> Int4Weight:
    """GPTQ layout: qweight int32 [K/8, N], qzeros int32 [G, N/8], scales [G, N], g_idx [K].

    GPTQ v1 checkpoints store ``zero - 1`` (``zero_offset=1``); v2 stores the zero itself.
    With act-order (``desc_act``) g_idx is not monotone: the columns are sorted by group
    and the permutation kept, so that each group is contiguous again.
    """
    q = _unpack_int32(qweight, 0).t()  # [N, K]
    z = (_unpack_int32(qzeros, 1) + zero_offset).t()  # [N, G]; v1 may give 16, kept as is
    k = q.shape[1]
    g = group_size if group_size > 0 else k
    perm = None
    if g_idx is not None and not torch.equal(g_idx.long(), torch.arange(k) // g):
        perm = torch.argsort(g_idx.long(), stable=True)
        counts = torch.bincount(g_idx.long(), minlength=k // g)
        if not bool((counts == g).all()):
            raise ValueError("GPTQ g_idx has groups of unequal size; not supported")
        q = q[:, perm]
    return Int4Weight(q.contiguous().to(torch.uint8), scales.float().t().contiguous(),
                      z.contiguous().to(torch.uint8), g, perm)


def concat_int4(parts: list[Int4Weight]) -> Int4Weight | None:
    """Fuse along the output dimension; None if the parts cannot share one layout."""
    first = parts[0]
    for p in parts[1:]:
        if p.group_size != first.group_size:
            return None
        if (p.perm is None) != (first.perm is None):
            return None
        if p.perm is not None and not torch.equal(p.perm, first.perm):
            return None
        if (p.mins is None) != (first.mins is None):
            return None
    mins = None if first.mins is None else torch.cat([p.mins for p in parts])
    return Int4Weight(torch.cat([p.q for p in parts]), torch.cat([p.scales for p in parts]),
                      torch.cat([p.zeros for p in parts]), first.group_size, first.perm, mins)
