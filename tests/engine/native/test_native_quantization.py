"""Quantized weights: on-load int8/int4 against bf16; AWQ / GPTQ loading against a
dequantized reference checkpoint that this test builds with its own packing code."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from .conftest import make_core
from .test_native_vs_transformers import PROMPTS, prefill_logits

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)

# Relative max logit error (|ours - bf16| / max |bf16|) on the tiny random model, measured
# ~0.01 (int8) and ~0.1 (int4 g32) to ~0.2 (int4 g128); bounds leave 2x headroom.
QUANT_TOL = {"int8": 0.04, "int4": 0.4}


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("method,group", [("int8", None), ("int4", 32), ("int4", 128)])
def test_on_load_quantization_close_to_bf16(llama_dir, method, group):
    ref = prefill_logits(make_core(llama_dir, dtype="bfloat16"), PROMPTS[2])
    opts = {"int4_group_size": group} if group else {}
    core = make_core(llama_dir, dtype="bfloat16", quantization=method, **opts)
    got = prefill_logits(core, PROMPTS[2])
    assert rel_err(got, ref) < QUANT_TOL[method]
    assert torch.corrcoef(torch.stack([got, ref]))[0, 1] > 0.9


def test_capacity_info_reports_quantized_bytes(llama_dir):
    from server.engine.native.setup import build_engine
    from server.config import NodeSettings

    infos = {q: build_engine(NodeSettings(engine="native", dtype="bfloat16", quantization=q,
                                          max_model_len=128), llama_dir, "t").info
             for q in (None, "int8", "int4")}
    assert infos["int8"].quantization == "int8" and infos["int4"].quantization == "int4"
    assert infos[None].weight_bytes > infos["int8"].weight_bytes > infos["int4"].weight_bytes


def test_unknown_architecture_and_bad_quantization_are_clear_errors(llama_dir, tmp_path):
    bad = tmp_path / "m"
    shutil.copytree(llama_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    with pytest.raises(ValueError, match="awq checkpoint"):
        make_core(bad, quantization="awq")
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not supported by the native engine"):
        make_core(bad)


# -- building AWQ / GPTQ checkpoints ------------------------------------------------------
def quantize_groups(w: np.ndarray, groups: list[np.ndarray]):
    """Asymmetric 4-bit per group of input channels: q [N, K] in original order, s/z [G, N]."""
    n, k = w.shape
    q = np.zeros((n, k), np.int64)
    scales = np.zeros((len(groups), n), np.float32)
    zeros = np.zeros((len(groups), n), np.int64)
    for g, cols in enumerate(groups):
        part = w[:, cols]
        lo, hi = np.minimum(part.min(1), 0), np.maximum(part.max(1), 0)
        s = np.maximum((hi - lo) / 15, 1e-8)
        z = np.clip(np.round(-lo / s), 0, 15)
        q[:, cols] = np.clip(np.round(part / s[:, None] + z[:, None]), 0, 15)
        scales[g], zeros[g] = s, z
    deq = np.zeros_like(w)
    for g, cols in enumerate(groups):
        deq[:, cols] = (q[:, cols] - zeros[g][:, None]) * scales[g][:, None]
    return q, scales, zeros, deq


def pack8(vals: np.ndarray) -> np.ndarray:
    """[..., 8] nibbles -> int32 (nibble i at bits 4i)."""
    out = np.zeros(vals.shape[:-1], np.int64)
    for i in range(8):
        out |= vals[..., i].astype(np.int64) << (4 * i)
    return out.astype(np.uint32).view(np.int32)


def awq_tensors(q, scales, zeros):
    qt = q.T  # [K, N]
    k, n = qt.shape
    order = list(AWQ_ORDER)
    qweight = pack8(qt.reshape(k, n // 8, 8)[:, :, order])
    qzeros = pack8(zeros.reshape(zeros.shape[0], n // 8, 8)[:, :, order])
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales.astype(np.float16)}


def gptq_tensors(q, scales, zeros, g_idx):
    n, k = q.shape
    qweight = pack8(q.T.reshape(k // 8, 8, n).transpose(0, 2, 1))
    qzeros = pack8((zeros - 1).reshape(zeros.shape[0], n // 8, 8))  # v1 stores zero - 1
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales.astype(np.float16),
            "g_idx": g_idx.astype(np.int32)}


def build_quantized(src, method: str, group: int, act_order: bool, out_q, out_ref):
    tensors = load_file(str(src / "model.safetensors"))
    quantized, dense = {}, {}
    rng = np.random.default_rng(5)
    for name, w in tensors.items():
        base = name.removesuffix(".weight")
        if not (name.endswith(".weight") and base.split("layers.")[-1].split(".", 1)[-1] in LINEARS):
            quantized[name] = dense[name] = w
            continue
        k = w.shape[1]
        order = rng.permutation(k) if act_order else np.arange(k)
        groups = [order[i:i + group] for i in range(0, k, group)]
        q, s, z, deq = quantize_groups(w.astype(np.float32), groups)
        # Round scales to fp16 in the reference too: the checkpoint stores them as fp16.
        s16 = s.astype(np.float16).astype(np.float32)
        g_idx = np.empty(k, np.int64)
        for gi, cols in enumerate(groups):
            g_idx[cols] = gi
            deq[:, cols] = (q[:, cols] - z[gi][:, None]) * s16[gi][:, None]
        dense[name] = deq.astype(np.float32)
        parts = awq_tensors(q, s, z) if method == "awq" else gptq_tensors(q, s, z, g_idx)
        quantized |= {f"{base}.{key}": v for key, v in parts.items()}
        if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")) and base + ".bias" in tensors:
            quantized[base + ".bias"] = tensors[base + ".bias"]
    for out, ts in ((out_q, quantized), (out_ref, dense)):
        shutil.copytree(src, out)
        (out / "model.safetensors").unlink()
        save_file(ts, str(out / "model.safetensors"))
    cfg = json.loads((out_q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": method, "bits": 4, "group_size": group,
                                  "zero_point": True, "version": "gemm", "desc_act": act_order,
                                  "sym": False}
    (out_q / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("arch,method,group,act_order", [
    ("llama", "awq", 32, False), ("qwen2", "awq", 64, False),
    ("llama", "gptq", 32, False), ("qwen2", "gptq", 64, True),
])
def test_prequantized_matches_dequantized_reference(request, tmp_path, arch, method, group, act_order):
    src = request.getfixturevalue(f"{arch}_dir")
    build_quantized(src, method, group, act_order, tmp_path / "q", tmp_path / "ref")
    core_q = make_core(tmp_path / "q", dtype="float32")
    # act-order gives q, k, v different permutations: they stay separate 4-bit parts
    kinds = {type(m).__name__ for m in core_q.runner.model.layers[0].qkv_proj.modules()}
    assert "Int4Linear" in kinds and "DenseLinear" not in kinds
    ref = prefill_logits(make_core(tmp_path / "ref", dtype="float32"), PROMPTS[2])
    got = prefill_logits(core_q, PROMPTS[2])
    assert rel_err(got, ref) < 1e-4  # same math in fp32: only reduction order differs
    # bf16 through torch's packed int4 kernel (decode-sized batches) stays close too.
    ref16 = prefill_logits(make_core(tmp_path / "ref", dtype="bfloat16"), PROMPTS[2][:1])
    got16 = prefill_logits(make_core(tmp_path / "q", dtype="bfloat16"), PROMPTS[2][:1])
    assert rel_err(got16, ref16) < 0.06
