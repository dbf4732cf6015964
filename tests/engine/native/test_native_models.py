"""Checkpoint variants: sharded safetensors, Llama 3 rope scaling, Mistral, sliding window."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.numpy import load_file, save_file

from server.demo_model import TinyLlamaSpec, build_llama_dir

from .conftest import LLAMA, greedy, make_core, run_all, tokens_of
from .test_native_vs_transformers import PROMPTS, hf_greedy, prefill_logits


def edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_sharded_checkpoint_loads_identically(llama_dir, tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(llama_dir, d)
    tensors = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(d / fname))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    a = prefill_logits(make_core(llama_dir), PROMPTS[1])
    b = prefill_logits(make_core(d), PROMPTS[1])
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch,changes", [
    ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    ("MistralForCausalLM", {"model_type": "mistral", "sliding_window": 4096}),
])
def test_variants_greedy_match_transformers(tmp_path, arch, changes):
    from transformers import AutoModelForCausalLM

    d = build_llama_dir(tmp_path / "m", TinyLlamaSpec(**{**LLAMA.__dict__, "architecture": arch}))
    edit_config(d, **changes)
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    prompts = PROMPTS[1:3]
    expected = [hf_greedy(hf, p, 8) for p in prompts]
    out = run_all(make_core(d), prompts, greedy(8))
    assert [tokens_of(out[f"r{i}"]) for i in range(2)] == expected


def test_sliding_window_caps_context_or_refuses(tmp_path):
    d = build_llama_dir(tmp_path / "m", TinyLlamaSpec(**{**LLAMA.__dict__, "architecture": "MistralForCausalLM"}))
    edit_config(d, model_type="mistral", sliding_window=64)
    from server.config import NodeSettings
    from server.engine.native.setup import build_engine

    info = build_engine(NodeSettings(engine="native", dtype="float32"), d, "m").info
    assert info.max_model_len == 64
    with pytest.raises(ValueError, match="sliding-window"):
        make_core(d, max_model_len=128)


def test_unsupported_rope_scaling_is_a_clear_error(llama_dir, tmp_path):
    d = tmp_path / "yarn"
    shutil.copytree(llama_dir, d)
    edit_config(d, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="yarn"):
        make_core(d)
