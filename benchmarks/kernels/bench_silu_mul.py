"""SiLU-and-multiply: Triton vs reference."""

import torch

from kernels import reference as ref

from .common import device, report, time_us, triton_or_none


def main() -> None:
    dev, rows = device(), []
    tri = triton_or_none("silu_mul", "silu_and_mul")
    for tokens, inter in [(1, 4864), (32, 4864), (512, 4864)]:
        x = torch.randn(tokens, 2 * inter, device=dev, dtype=torch.bfloat16)
        row = {"tokens": tokens, "inter": inter, "reference_us": time_us(lambda: ref.silu_and_mul(x))}
        if tri:
            row["triton_us"] = time_us(lambda: tri(x))
        rows.append(row)
    report("silu_mul", rows)


if __name__ == "__main__":
    main()
