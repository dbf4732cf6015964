"""The CPU fast paths give the same answers as the plain ones: oneDNN-prepacked bf16
weights against ``F.linear``, and single-threaded decode attention against the threaded one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from server.engine.native import attention
from server.engine.native.linear import DenseLinear, onednn_bf16_available
from server.engine.native.loader import load_model

from .conftest import greedy, make_core, run_all


@pytest.mark.parametrize("rows", [0, 1, 3, 17, 130])
@pytest.mark.parametrize("bias", [False, True])
def test_prepacked_linear_matches_f_linear(rows, bias):
    torch.manual_seed(rows)
    w = torch.randn(72, 40, dtype=torch.bfloat16)
    b = torch.randn(72, dtype=torch.bfloat16) if bias else None
    x = torch.randn(rows, 80, dtype=torch.bfloat16)[:, ::2]  # a strided input, as slices give
    want = F.linear(x, w, b)
    lin = DenseLinear(w.clone(), None if b is None else b.clone())
    packed = lin.prepack_onednn()
    assert packed == onednn_bf16_available()
    assert lin.weight_bytes == 72 * 40 * 2  # still the checkpoint's bytes
    if packed:
        assert lin.weight is None  # replaced, not kept beside the packed copy
    got = lin(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_other_dtypes_stay_on_f_linear(dtype):
    lin = DenseLinear(torch.randn(8, 8, dtype=dtype))
    assert lin.prepack_onednn() is False
    assert lin.weight is not None


def test_a_failed_prepack_keeps_the_dense_weight(monkeypatch):
    """A oneDNN build that cannot reorder the weight leaves the layer on F.linear."""
    import server.engine.native.linear as linear

    def refuse(*_):
        raise RuntimeError("reorder not supported on this build")

    monkeypatch.setattr(linear, "onednn_bf16_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    w = torch.randn(16, 8, dtype=torch.bfloat16)
    lin = DenseLinear(w.clone())
    assert lin.prepack_onednn() is False
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(lin(x), F.linear(x, w), rtol=0, atol=0)


def test_loader_prepacks_bf16_on_cpu_unless_disabled(llama_dir):
    def kinds(model):
        return {m.weight is None for m in model.modules() if isinstance(m, DenseLinear)}

    on = load_model(llama_dir, "bfloat16", device="cpu").model
    assert kinds(on) == {onednn_bf16_available()}
    off = load_model(llama_dir, "bfloat16", device="cpu", options={"cpu_prepack": False}).model
    assert kinds(off) == {False}
    fp32 = load_model(llama_dir, "float32", device="cpu").model
    assert kinds(fp32) == {False}


def test_prepacked_engine_generates_what_the_dense_one_does(llama_dir):
    prompts = [[5, 9, 2, 44, 7], list(range(3, 40)), [100] * 18]
    packed = run_all(make_core(llama_dir, dtype="bfloat16"), prompts, greedy(10))
    dense = run_all(make_core(llama_dir, dtype="bfloat16", cpu_prepack=False), prompts, greedy(10))

    def tokens(out):
        return {rid: [t for d in ds for t in d.token_ids] for rid, ds in out.items()}

    assert tokens(packed) == tokens(dense)


def test_serial_and_threaded_decode_attention_agree(llama_dir, monkeypatch):
    """Decode attention drops to one thread for small batches; both sides of the threshold
    must give the same tokens (fp32, so any difference would be a real one)."""
    prompts = [list(range(7, 7 + n)) for n in (3, 21, 40, 9)]

    def run():
        out = run_all(make_core(llama_dir, dtype="float32"), prompts, greedy(12), stagger=True)
        return {rid: [t for d in ds for t in d.token_ids] for rid, ds in out.items()}

    calls = {"serial": 0}
    real = torch.set_num_threads

    def counting(n):
        calls["serial"] += n == 1
        real(n)

    monkeypatch.setattr(torch, "set_num_threads", counting)
    monkeypatch.setattr(attention, "SERIAL_DECODE_MAX_TOKENS", 1 << 30)
    serial = run()
    went_serial = calls["serial"]
    monkeypatch.setattr(attention, "SERIAL_DECODE_MAX_TOKENS", 0)
    threaded = run()
    assert serial == threaded
    if torch.get_num_threads() > 1:
        assert went_serial > 0
