"""RMSNorm (+residual), rotary and SiLU-and-mul against their PyTorch references."""

import pytest
import torch

from kernels import reference as ref

from .conftest import DTYPES, close


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(1, 24), (3, 130), (7, 40)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(device, dtype, tokens, hidden, with_residual):
    from kernels.rmsnorm import rms_norm

    g = torch.Generator().manual_seed(tokens * hidden)
    x = torch.randn(tokens, hidden, generator=g).to(device, dtype)
    w = torch.randn(hidden, generator=g).to(device, dtype)
    r = torch.randn(tokens, hidden, generator=g).to(device, dtype) if with_residual else None
    out, res = rms_norm(x, w, 1e-6, r)
    eout, eres = ref.rms_norm(x, w, 1e-6, r)
    close(out, eout)
    close(res, eres)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hq,hk,d", [(1, 2, 1, 8), (5, 3, 3, 6), (6, 4, 2, 34)])
def test_rotary(device, dtype, tokens, hq, hk, d):
    from kernels.rotary import rotary

    from server.engine.native.models.llama import rope_cos_sin

    class Cfg:  # the few fields rope_cos_sin reads
        head_dim, rope_theta, rope_scaling = d, 10000.0, None

    cs = rope_cos_sin(Cfg, 64).to(device)
    g = torch.Generator().manual_seed(d)
    q = torch.randn(tokens, hq, d, generator=g).to(device, dtype)
    k = torch.randn(tokens, hk, d, generator=g).to(device, dtype)
    pos = torch.randint(0, 64, (tokens,), generator=g).to(device)
    oq, ok = rotary(q, k, pos, cs)
    eq, ek = ref.rotary(q, k, pos, cs)
    close(oq, eq)
    close(ok, ek)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,inter", [(1, 6), (3, 42), (5, 123)])
def test_silu_and_mul(device, dtype, tokens, inter):
    from kernels.silu_mul import silu_and_mul

    x = torch.randn(tokens, 2 * inter, generator=torch.Generator().manual_seed(inter)).to(device, dtype)
    close(silu_and_mul(x, block=32), ref.silu_and_mul(x))
