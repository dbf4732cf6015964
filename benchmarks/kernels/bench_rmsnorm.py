"""Fused residual + RMSNorm: Triton vs reference vs torch.nn.functional.rms_norm."""

import torch
import torch.nn.functional as F

from kernels import reference as ref

from .common import device, report, time_us, triton_or_none


def main() -> None:
    dev, rows = device(), []
    tri = triton_or_none("rmsnorm", "rms_norm")
    for tokens, hidden in [(1, 896), (32, 896), (512, 896), (1, 4096), (512, 4096)]:
        x = torch.randn(tokens, hidden, device=dev, dtype=torch.bfloat16)
        r, w = torch.randn_like(x), torch.randn(hidden, device=dev, dtype=torch.bfloat16)
        row = {"tokens": tokens, "hidden": hidden,
               "reference_us": time_us(lambda: ref.rms_norm(x, w, 1e-6, r)),
               "torch_rms_norm_us": time_us(lambda: F.rms_norm(x + r, (hidden,), w, 1e-6))}
        if tri:
            row["triton_us"] = time_us(lambda: tri(x, w, 1e-6, r))
        rows.append(row)
    report("rmsnorm", rows)


if __name__ == "__main__":
    main()
