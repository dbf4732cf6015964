"""Int8 and int4 dequant-matmul, GEMV (decode) and GEMM (prefill) shapes."""

import pytest
import torch

from kernels import reference as ref

from .conftest import DTYPES, close


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 7, 40), (3, 70, 130), (37, 33, 72)])
def test_int8_matmul(device, dtype, m, n, k):
    from kernels.int8_matmul import int8_matmul

    q = torch.randint(-127, 128, (n, k), generator=torch.Generator().manual_seed(n)).to(torch.int8)
    s = (rand(n, seed=1).abs() * 0.01 + 1e-3).to(device, dtype)
    x = rand(m, k, seed=2).to(device, dtype)
    q = q.to(device)
    close(int8_matmul(x, q, s), ref.int8_matmul(x, q, s))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k,group", [(1, 9, 64, 32), (2, 70, 128, 64), (35, 33, 256, 128)])
def test_int4_matmul(device, dtype, m, n, k, group):
    from kernels.int4_matmul import int4_matmul

    from server.engine.native.quant import quantize_int4

    w4 = quantize_int4(rand(n, k, seed=3), group)
    packed = ref.pack_int4(w4.q).to(device)
    scales, zeros = w4.scales.to(device, dtype), w4.zeros.to(device)
    x = rand(m, k, seed=4).to(device, dtype)
    close(int4_matmul(x, packed, scales, zeros, group), ref.int4_matmul(x, packed, scales, zeros, group))


def test_int4_pack_roundtrip():
    q = torch.randint(0, 16, (5, 12), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    assert torch.equal(ref.unpack_int4(ref.pack_int4(q)), q)
