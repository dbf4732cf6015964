"""Paged-attention decode against the reference and against dense attention."""

import pytest
import torch
import torch.nn.functional as F

from kernels import reference as ref

from .conftest import DTYPES, close


def make_cache(ctx_lens, hk, d, bs, dtype, device, seed=0):
    """Scatter each sequence's dense K/V into shuffled blocks; returns everything."""
    g = torch.Generator().manual_seed(seed)
    nblocks = sum(-(-n // bs) for n in ctx_lens) + 3
    perm = torch.randperm(nblocks, generator=g).tolist()
    kc = torch.randn(nblocks, bs, hk, d, generator=g)
    vc = torch.randn(nblocks, bs, hk, d, generator=g)
    width = max(-(-n // bs) for n in ctx_lens)
    tables, dense = [], []
    for n in ctx_lens:
        blocks = [perm.pop() for _ in range(-(-n // bs))]
        tables.append(blocks + [blocks[0]] * (width - len(blocks)))
        dense.append((torch.cat([kc[b] for b in blocks])[:n], torch.cat([vc[b] for b in blocks])[:n]))
    to = dict(device=device, dtype=dtype)
    return kc.to(**to), vc.to(**to), torch.tensor(tables, device=device), dense


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ctx_lens,hq,hk,d,bs", [
    ([1], 2, 1, 8, 4), ([5, 17, 3], 4, 2, 12, 8), ([33, 9], 6, 3, 16, 16),
])
def test_paged_decode(device, dtype, ctx_lens, hq, hk, d, bs):
    from kernels.paged_attention import paged_attention_decode

    kc, vc, tables, dense = make_cache(ctx_lens, hk, d, bs, dtype, device)
    q = torch.randn(len(ctx_lens), hq, d, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    lens = torch.tensor(ctx_lens, device=device)
    scale = d ** -0.5
    out = paged_attention_decode(q, kc, vc, tables, lens, scale)
    close(out, ref.paged_attention_decode(q, kc, vc, tables, lens, scale))
    for i, (k, v) in enumerate(dense):  # and against dense attention over the same context
        e = F.scaled_dot_product_attention(q[i][None, :, None].float(), k.permute(1, 0, 2)[None].float(),
                                           v.permute(1, 0, 2)[None].float(), scale=scale, enable_gqa=True)
        close(out[i], e[0, :, 0].to(dtype))
