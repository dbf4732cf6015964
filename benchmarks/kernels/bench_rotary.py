"""Rotary embedding: Triton vs reference."""

import torch

from kernels import reference as ref
from server.engine.native.models.llama import rope_cos_sin

from .common import device, report, time_us, triton_or_none


class _Cfg:
    head_dim, rope_theta, rope_scaling = 64, 1e6, None


def main() -> None:
    dev, rows = device(), []
    tri = triton_or_none("rotary", "rotary")
    cs = rope_cos_sin(_Cfg, 4096).to(dev)
    for tokens in (1, 32, 512):
        q = torch.randn(tokens, 14, 64, device=dev, dtype=torch.bfloat16)
        k = torch.randn(tokens, 2, 64, device=dev, dtype=torch.bfloat16)
        pos = torch.arange(tokens, device=dev)
        row = {"tokens": tokens, "reference_us": time_us(lambda: ref.rotary(q, k, pos, cs))}
        if tri:
            row["triton_us"] = time_us(lambda: tri(q, k, pos, cs))
        rows.append(row)
    report("rotary", rows)


if __name__ == "__main__":
    main()
