"""A GGUF file through each engine's loading path, on a tiny random model written the way
llama.cpp writes one: native direct int4 == native dense dequantized == transformers on the
converted directory (the one vLLM serves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from server.engine.native.linear import DenseLinear, Int4Linear
from server.engine.native.loader import load_model
from server.gguf import open_gguf
from server.gguf.convert import convert_to_hf, metadata_dir, source_record
from server.gguf.weights import GgufWeights
from tests.gguf.tinygguf import DenseOnly
from tests.quality.lm import native_logits

PROMPT = [5, 17, 200, 31, 999, 64, 7, 300, 12, 45, 46, 47, 48, 100, 101, 102, 103, 104]



@pytest.fixture(scope="module")
def loaded(tiny_gguf: Path):
    meta, g, _ = metadata_dir(tiny_gguf)
    ws = GgufWeights(g)
    direct = load_model(meta, "float32", None, "cpu", 512, {}, weights=ws)
    dense = load_model(meta, "float32", None, "cpu", 512, {}, weights=DenseOnly(ws))
    return meta, ws, direct, dense


def test_unpermuted_weights_are_the_original_ones(loaded, tiny_hf: Path) -> None:
    from safetensors.torch import load_file

    _, ws, _, _ = loaded
    orig = load_file(str(tiny_hf / "model.safetensors"))
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                 "model.layers.0.mlp.gate_proj.weight", "lm_head.weight"):
        ours, ref = ws.get(name), orig[name].float()
        cos = torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0).item()
        assert cos > 0.98, (name, cos)  # 4-bit rounding only; a wrong row order gives ~0
        rows_cos = torch.nn.functional.cosine_similarity(ours, ref, dim=1)
        assert rows_cos.min().item() > 0.9, name


def test_direct_blocks_become_int4_layers_and_k_quants_are_dequantized(loaded) -> None:
    _, _, direct, _ = loaded
    layer = direct.model.layers[0]
    assert isinstance(layer.qkv_proj, Int4Linear) and layer.qkv_proj.mins is not None  # Q4_1
    assert isinstance(layer.gate_up_proj, Int4Linear) and layer.gate_up_proj.mins is None  # Q4_0: zero 8
    assert int(layer.gate_up_proj.zeros.unique().item()) == 8
    assert isinstance(layer.down_proj, DenseLinear)  # Q6_K has no exact int4 layout
    assert direct.quantization == "gguf-q4_1"
    assert "4 Q6_K" not in direct.load_note and "2 Q6_K" in direct.load_note
    assert "no exact int4 layout" in direct.load_note and "no float round trip" in direct.load_note


def test_direct_int4_equals_dequantized_floats(loaded) -> None:
    _, _, direct, dense = loaded
    a, b = native_logits(direct, PROMPT), native_logits(dense, PROMPT)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


def test_direct_int4_bf16_paths_stay_close(loaded) -> None:
    """bf16: torch's packed CPU int4 op (decode rows) and the dequantizing path (prefill)."""
    meta, ws, _, dense = loaded
    bf16 = load_model(meta, "bfloat16", None, "cpu", 512, {}, weights=ws)
    ref = native_logits(dense, PROMPT)
    for ids in (PROMPT, PROMPT[:1]):  # 18 rows: wide path; 1 row: packed op
        out = native_logits(bf16, ids)
        err = (out - ref[:len(ids)]).abs().max() / ref[:len(ids)].abs().max()
        assert err < 0.05, (len(ids), err)


def test_converted_directory_is_the_same_model_in_transformers(loaded, tiny_gguf: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, _, dense = loaded
    out = convert_to_hf(tiny_gguf, dtype="float32")
    assert convert_to_hf(tiny_gguf, dtype="float32") == out  # once per file hash
    rec = source_record(out)
    assert rec["converted"] is True and rec["source"] == f"gguf:{tiny_gguf.name}"
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.inference_mode():
        hf = model(torch.tensor([PROMPT])).logits[0]
    ref = native_logits(dense, PROMPT)
    assert torch.allclose(hf, ref, atol=1e-3, rtol=1e-3), (hf - ref).abs().max()
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False)
    assert ids.endswith("<|im_start|>assistant\n")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"][0] == tok.convert_tokens_to_ids("<|im_end|>")


def test_q4_layout_matches_the_reference_dequantizer(tiny_gguf: Path) -> None:
    """Our block decoding against gguf's own numpy dequantizer, tensor by tensor."""
    from gguf.quants import dequantize
    import gguf

    g = open_gguf(tiny_gguf)
    ws = GgufWeights(g)
    entry = g.tensors["blk.1.ffn_up.weight"]  # Q4_0, not permuted
    ref = dequantize(np.asarray(entry.data), gguf.GGMLQuantizationType.Q4_0)
    ours = ws.int4("model.layers.1.mlp.up_proj.weight").dequantize().numpy()
    assert np.array_equal(ours, ref.reshape(ours.shape))
