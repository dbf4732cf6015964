"""Paged-attention decode: Triton vs the gather + SDPA reference; reports KV GB/s."""

import torch

from kernels import reference as ref

from .common import device, report, time_us, triton_or_none


def main() -> None:
    dev, rows = device(), []
    tri = triton_or_none("paged_attention", "paged_attention_decode")
    hq, hk, d, bs = 14, 2, 64, 16
    for batch, ctx in [(1, 512), (32, 512), (32, 2048)]:
        nblk = batch * ctx // bs
        kc = torch.randn(nblk, bs, hk, d, device=dev, dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        tables = torch.randperm(nblk, device=dev).view(batch, ctx // bs)
        lens = torch.full((batch,), ctx, device=dev)
        q = torch.randn(batch, hq, d, device=dev, dtype=torch.bfloat16)
        kv_bytes = 2 * batch * ctx * hk * d * 2
        us = time_us(lambda: ref.paged_attention_decode(q, kc, vc, tables, lens, d ** -0.5))
        row = {"batch": batch, "context": ctx, "reference_us": us, "reference_GBps": kv_bytes / us / 1e3}
        if tri:
            t = time_us(lambda: tri(q, kc, vc, tables, lens, d ** -0.5))
            row |= {"triton_us": t, "triton_GBps": kv_bytes / t / 1e3}
        rows.append(row)
    report("paged_attention", rows)


if __name__ == "__main__":
    main()
