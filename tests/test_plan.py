"""Memory planning and --quantization auto, from config.json alone."""

from __future__ import annotations

import json

import pytest

import server.plan as plan
from server.config import NodeSettings

GiB = 1 << 30
LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
            "torch_dtype": "bfloat16", "tie_word_embeddings": False}


@pytest.fixture
def llama8b(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B))
    return tmp_path


def test_shape_matches_known_parameter_count(llama8b):
    shape = plan.read_shape(llama8b)
    assert abs(shape.params - 8.03e9) / 8.03e9 < 0.01  # Llama-3-8B has 8.03 B parameters
    assert plan.kv_bytes_per_token(shape, "bfloat16") == 2 * 32 * 8 * 128 * 2  # 128 KiB per token


@pytest.mark.parametrize("free_gib, engine, expected", [
    (40, "native", None), (13, "native", "int8"), (9, "native", "int4")])
def test_auto_picks_first_that_fits(monkeypatch, llama8b, free_gib, engine, expected):
    monkeypatch.setattr(plan, "available_memory", lambda: (free_gib * GiB, "available system memory"))
    choice = plan.choose_quantization(NodeSettings(model=str(llama8b), engine=engine, quantization="auto"))
    assert choice.method == expected
    assert "fit" in choice.reason


def test_gpu_ladder_uses_fp8(monkeypatch, llama8b):
    monkeypatch.setattr(plan, "available_memory", lambda: (14 * GiB, "GPU 0 (RTX 4080) free memory"))
    assert plan.choose_quantization(NodeSettings(model=str(llama8b), quantization="auto")).method == "fp8"


def test_nothing_fits_is_a_clear_error(monkeypatch, llama8b):
    monkeypatch.setattr(plan, "available_memory", lambda: (2 * GiB, "available system memory"))
    with pytest.raises(ValueError, match="does not fit"):
        plan.choose_quantization(NodeSettings(model=str(llama8b), engine="native", quantization="auto"))


def test_prequantized_checkpoint_is_reported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_8B, "quantization_config": {"quant_method": "awq"}}))
    choice = plan.choose_quantization(NodeSettings(model=str(tmp_path), quantization="auto"))
    assert choice.method == "awq" and "pre-quantized" in choice.reason


def test_plan_table_rows(monkeypatch, llama8b):
    monkeypatch.setattr(plan, "available_memory", lambda: (24 * GiB, "available system memory"))
    rows = {r["quantization"]: r for r in plan.plan_table(str(llama8b))}
    assert rows["none"]["weight_bytes"] > rows["int8"]["weight_bytes"] > rows["int4"]["weight_bytes"]
    assert rows["int4"]["max_context"] > rows["none"]["max_context"]
    assert all(r["kv_bytes_per_token"] == 131072 for r in rows.values())
