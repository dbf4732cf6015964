"""Int8 / int4 weight-only matmul, GEMV (decode) and GEMM (prefill) shapes.

CPU: dense bf16 F.linear vs torch's packed ops (``_weight_int8pack_mm``,
``_weight_int4pack_mm_for_cpu``) vs the dequantize-then-GEMM reference. GPU adds Triton.
Reports weight GB/s (bytes of the stored weight / time): decode is memory-bound.
"""

import torch
import torch.nn.functional as F

from kernels import reference as ref
from server.engine.native.linear import Int4Linear
from server.engine.native.quant import quantize_int4, quantize_int8

from .common import device, report, time_us, triton_or_none


def main() -> None:
    dev, rows = device(), []
    tri8 = triton_or_none("int8_matmul", "int8_matmul")
    tri4 = triton_or_none("int4_matmul", "int4_matmul")
    n, k, group = 4864, 896, 128
    w = torch.randn(n, k) * 0.02
    q8, s8 = quantize_int8(w)
    q8, s8 = q8.to(dev), s8.to(dev, torch.bfloat16)
    w4 = quantize_int4(w, group)
    lin4 = Int4Linear(ref.pack_int4(w4.q).to(dev), w4.scales.to(dev), w4.zeros.to(dev), group, None, torch.bfloat16)
    wb = w.to(dev, torch.bfloat16)
    for m in (1, 4, 32, 256):
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        row = {"M": m, "N": n, "K": k, "dense_bf16_us": time_us(lambda: F.linear(x, wb)),
               "int8_reference_us": time_us(lambda: ref.int8_matmul(x, q8, s8)),
               "int4_reference_us": time_us(lambda: ref.int4_matmul(x, lin4.packed, lin4.scales, lin4.zeros, group))}
        if dev == "cpu":
            lin4.prepare_cpu()
            row["int8_torch_packed_us"] = time_us(lambda: torch._weight_int8pack_mm(x, q8, s8))
            row["int4_torch_packed_us"] = time_us(
                lambda: torch._weight_int4pack_mm_for_cpu(x, lin4._cpu_pack, group, lin4._cpu_sz))
        if tri8:
            row["int8_triton_us"] = time_us(lambda: tri8(x, q8, s8))
            row["int4_triton_us"] = time_us(lambda: tri4(x, lin4.packed, lin4.scales, lin4.zeros, group))
        rows.append(row)
    report("quant_matmul", rows)


if __name__ == "__main__":
    main()
