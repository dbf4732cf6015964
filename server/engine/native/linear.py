"""Linear layers: dense, weight-only int8 (per channel) and int4 (group-wise).

Quantized weights are stored once in the kernels' canonical layout (see
``kernels/reference.py``); CPU additionally keeps torch's own packed form, because
``torch._weight_int8pack_mm`` / ``torch._weight_int4pack_mm_for_cpu`` read 2-4x fewer bytes
than a bf16 GEMV and decode is memory-bound. For wide batches (prefill) those ops are slower
than dequantizing once and calling the dense GEMM, so CPU switches on the row count.

Dense bf16 weights on CPU are handed to oneDNN once, in its own blocked layout
(``prepack_onednn``): the matmul then skips the per-call reorder, which on a 2-core AVX-512
machine makes the model's GEMVs 1.4-2.0x faster and its 32-128-row GEMMs 1.2-1.7x faster,
with identical results (``python -m benchmarks.kernels.bench_dense_linear``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from kernels import reference as ref

from .ops import use_triton

# Above this many rows, dequantize + dense GEMM beats torch's packed weight-only ops on CPU.
CPU_PACKED_MAX_ROWS = 8


@functools.cache
def onednn_bf16_available() -> bool:
    """oneDNN is built in and this CPU runs its bf16 kernels (AVX-512 or AMX; not plain AVX2)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class DenseLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self._weight_bytes = weight.numel() * weight.element_size()
        self._onednn: torch.Tensor | None = None  # oneDNN's prepacked weight, replacing ``weight``

    @property
    def weight_bytes(self) -> int:
        return self._weight_bytes

    def prepack_onednn(self) -> bool:
        """CPU bf16 only: swap the weight for oneDNN's prepacked copy (same memory, faster
        matmuls). Returns whether it did; fp32/fp16 stay on ``F.linear``, which is as fast
        or faster there at batch 1."""
        w = self.weight
        if w is None or w.device.type != "cpu" or w.dtype != torch.bfloat16 or not onednn_bf16_available():
            return False
        try:  # batch-size hint None: the layout that measured fastest from 1 to 128 rows
            self._onednn = torch.ops.mkldnn._reorder_linear_weight(w.data, None)
        except RuntimeError:  # a oneDNN build without it (e.g. some aarch64 wheels): stay dense
            return False
        self.weight = None
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._onednn is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self._onednn, self.bias, "none", [], "")
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
    """Group-wise asymmetric 4-bit weights; ``perm`` reorders input channels (GPTQ act-order).

    ``mins`` (GGUF Q4_1) adds a float per group: ``w = (q - zero) * s + min``. The kernels
    take integer zeros only, so the min term is added as its own small product,
    ``y += group_sums(x) @ mins.T`` (exact); torch's CPU int4 op folds it into its float zero.
    """

    def __init__(self, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, bias: torch.Tensor | None, dtype: torch.dtype,
                 perm: torch.Tensor | None = None, mins: torch.Tensor | None = None):
        super().__init__()
        self.group_size = group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("zeros", zeros.to(torch.uint8))
        self.register_buffer("mins", None if mins is None else mins.to(dtype))
        self.bias = None if bias is None else bias.to(dtype)
        self.perm = perm
        self._cpu_pack: torch.Tensor | None = None
        self._cpu_sz: torch.Tensor | None = None

    @property
    def weight_bytes(self) -> int:
        mins = 0 if self.mins is None else self.mins.numel() * self.mins.element_size()
        return (self.packed.numel() + self.zeros.numel()
                + self.scales.numel() * self.scales.element_size() + mins)

    def prepare_cpu(self) -> None:
        """Build torch's tinygemm layout: w = (q - 8) * s + z_f with z_f = (8 - zero) * s."""
        q = ref.unpack_int4(self.packed).to(torch.int32)
        self._cpu_pack = torch._convert_weight_to_int4pack_for_cpu(q, 1)
        s = self.scales.float()
        z = (8.0 - self.zeros.float()) * s
        if self.mins is not None:
            z = z + self.mins.float()
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
            return y if self.bias is None else y + self.bias
        else:
            y = ref.int4_matmul(x, self.packed, self.scales, self.zeros, self.group_size)
        if self.mins is not None:
            sums = x.float().view(x.shape[0], -1, self.group_size).sum(-1)
            y = y + (sums @ self.mins.float().t()).to(y.dtype)
        return y if self.bias is None else y + self.bias
