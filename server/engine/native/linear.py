"""Linear layers: dense, weight-only int8 (per channel) and int4 (group-wise).

Quantized weights are stored once in the kernels' canonical layout (see
``kernels/reference.py``); CPU additionally keeps torch's own packed form, because
``torch._weight_int8pack_mm`` / ``torch._weight_int4pack_mm_for_cpu`` read 2-4x fewer bytes
than a bf16 GEMV and decode is memory-bound. For wide batches (prefill) those ops are slower
than dequantizing once and calling the dense GEMM, so CPU switches on the row count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import reference as ref

from .ops import use_triton

# Above this many rows, dequantize + dense GEMM beats torch's packed weight-only ops on CPU.
CPU_PACKED_MAX_ROWS = 8


class DenseLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def weight_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Int8Linear(nn.Module):
    """``y = x @ (q * scales[:, None]).T + bias`` with q int8 ``[N, K]``."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype):
        super().__init__()
        self.register_buffer("qweight", qweight.to(torch.int8))
        self.register_buffer("scales", scales.to(dtype))
        self.bias = None if bias is None else bias.to(dtype)

    @property
    def weight_bytes(self) -> int:
        return self.qweight.numel() + self.scales.numel() * self.scales.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_triton(x):
            from kernels.int8_matmul import int8_matmul
            y = int8_matmul(x, self.qweight, self.scales)
        elif x.shape[0] <= CPU_PACKED_MAX_ROWS:
            y = torch._weight_int8pack_mm(x, self.qweight, self.scales)
        else:
            y = F.linear(x, self.qweight.to(x.dtype) * self.scales[:, None])
        return y if self.bias is None else y + self.bias


class Int4Linear(nn.Module):
    """Group-wise asymmetric 4-bit weights; ``perm`` reorders input channels (GPTQ act-order)."""

    def __init__(self, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, bias: torch.Tensor | None, dtype: torch.dtype,
                 perm: torch.Tensor | None = None):
        super().__init__()
        self.group_size = group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("zeros", zeros.to(torch.uint8))
        self.bias = None if bias is None else bias.to(dtype)
        self.perm = perm
        self._cpu_pack: torch.Tensor | None = None
        self._cpu_sz: torch.Tensor | None = None

    @property
    def weight_bytes(self) -> int:
        return (self.packed.numel() + self.zeros.numel()
                + self.scales.numel() * self.scales.element_size())

    def prepare_cpu(self) -> None:
        """Build torch's tinygemm layout: w = (q - 8) * s + z_f with z_f = (8 - zero) * s."""
        q = ref.unpack_int4(self.packed).to(torch.int32)
        self._cpu_pack = torch._convert_weight_to_int4pack_for_cpu(q, 1)
        s = self.scales.float()
        z = (8.0 - self.zeros.float()) * s
        self._cpu_sz = torch.stack([s, z], -1).transpose(0, 1).contiguous().to(self.scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x[:, self.perm]
        if use_triton(x):
            from kernels.int4_matmul import int4_matmul
            y = int4_matmul(x, self.packed, self.scales, self.zeros, self.group_size)
        elif x.shape[0] <= CPU_PACKED_MAX_ROWS and x.dtype == torch.bfloat16:
            if self._cpu_pack is None:
                self.prepare_cpu()
            y = torch._weight_int4pack_mm_for_cpu(x, self._cpu_pack, self.group_size, self._cpu_sz)
        else:
            y = ref.int4_matmul(x, self.packed, self.scales, self.zeros, self.group_size)
        return y if self.bias is None else y + self.bias
