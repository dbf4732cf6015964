"""GGUF files: metadata, tokenizer, and every kind of bad file as a GgufError naming it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from server.gguf import GgufError, check_supported, open_gguf
from server.gguf.reader import hf_config
from server.gguf.tokenizer import build_tokenizer, special_ids
from tests.gguf.tinygguf import write_gguf
from tests.nodeproc import VENV_BIN

EDGEFLEET = str(VENV_BIN / "edgefleet")


def test_metadata_becomes_the_hf_config(tiny_gguf: Path, tiny_hf: Path) -> None:
    g = open_gguf(tiny_gguf)
    check_supported(g)
    cfg, ref = hf_config(g), json.loads((tiny_hf / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim"):
        assert cfg[key] == ref[key], key
    assert cfg["tie_word_embeddings"] is False and cfg["architectures"] == ["LlamaForCausalLM"]
    assert g.quantization == "Q4_1" and g.tensor_types["Q6_K"] == 2 and g.tensor_types["Q4_0"] == 4


def test_tokenizer_from_metadata_equals_the_original(tiny_gguf: Path, tiny_hf: Path) -> None:
    from tokenizers import Tokenizer

    g = open_gguf(tiny_gguf)
    ours, ref = build_tokenizer(g), Tokenizer.from_file(str(tiny_hf / "tokenizer.json"))
    for text in ("hello world, the model answers 12345!", "<|im_start|>user\nhi<|im_end|>", "  spaces\tand\nlines"):
        assert ours.encode(text).ids == ref.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text
    ids = special_ids(g)
    assert ids["eos"][0] == ours.token_to_id("<|im_end|>")  # the chat template's end of turn comes first


def _expect_error(path: Path, *fragments: str) -> None:
    with pytest.raises(GgufError) as info:
        check_supported(open_gguf(path))
    msg = str(info.value)
    assert str(path) in msg
    for f in fragments:
        assert f in msg, msg


def test_not_a_gguf_file(tmp_path: Path, tiny_hf: Path) -> None:
    _expect_error(tiny_hf / "model.safetensors", "not a GGUF file")
    _expect_error(tmp_path / "missing.gguf", "cannot read")


@pytest.mark.parametrize("keep", [0.5, 0.999, 100])
def test_truncated_file(tmp_path: Path, tiny_gguf: Path, keep: float) -> None:
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:int(len(data) * keep)] if keep < 1 else data[:int(keep)])
    _expect_error(cut, "truncated or corrupt" if keep == 100 else "truncated")


def test_corrupt_header(tmp_path: Path, tiny_gguf: Path) -> None:
    data = bytearray(tiny_gguf.read_bytes())
    data[8:16] = b"\xff" * 8  # tensor count: absurd
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    _expect_error(bad, "corrupt")


def test_unsupported_architecture(tmp_path: Path, tiny_hf: Path) -> None:
    _expect_error(write_gguf(tiny_hf, tmp_path / "mamba.gguf", arch="mamba"), "unsupported architecture 'mamba'")


def test_unsupported_tensor_type(tmp_path: Path, tiny_gguf: Path) -> None:
    """A type the gguf package cannot decode (Q8_1: llama.cpp's activation format)."""
    import gguf

    g = open_gguf(tiny_gguf)
    entry = g.tensors["blk.0.attn_q.weight"]
    reader = gguf.GGUFReader(str(tiny_gguf))
    t = next(t for t in reader.tensors if t.name == entry.name)
    data = bytearray(tiny_gguf.read_bytes())
    # the tensor-info record: name, n_dims, dims, type (uint32), offset; patch its type field
    name = entry.name.encode()
    at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    type_at = at + 4 + 8 * n_dims
    assert int.from_bytes(data[type_at:type_at + 4], "little") == int(t.tensor_type)
    data[type_at:type_at + 4] = int(gguf.GGMLQuantizationType.Q8_1).to_bytes(4, "little")
    bad = tmp_path / "q81.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GgufError) as info:
        check_supported(open_gguf(bad))
    assert str(bad) in str(info.value) and ("unsupported tensor type Q8_1" in str(info.value)
                                            or "truncated or corrupt" in str(info.value))


def test_cli_prints_the_reason_without_a_traceback(tmp_path: Path, tiny_gguf: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:5000])
    for argv in (["serve", "--engine", "native", "--model", str(cut), "--port", "1"],
                 ["serve", "--engine", "vllm", "--model", str(cut), "--port", "1"],
                 ["plan", "--model", str(cut)]):
        r = subprocess.run([EDGEFLEET, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        assert f"{cut}: truncated" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_plan_reports_the_files_quantization_bytes_and_context(tiny_gguf: Path) -> None:
    r = subprocess.run([EDGEFLEET, "plan", "--model", str(tiny_gguf), "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    own = rows[0]
    assert own["quantization"] == "gguf Q4_1" and own["file_bytes"] == tiny_gguf.stat().st_size
    assert 0 < own["weight_bytes"] < rows[1]["weight_bytes"]  # blocks are smaller than the float model
    assert own["max_context"] == 4096 and own["kv_bytes_per_token"] == 2 * 2 * 2 * 64 * 4  # float32: a small model


def test_default_model_offline_says_what_to_run(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEFLEET_CACHE_DIR": str(tmp_path / "empty"), "PIP_NO_INDEX": "1"}
    r = subprocess.run([EDGEFLEET, "serve", "--engine", "native", "--port", "1"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "-m server.model_cache" in r.stderr and "SmolLM2-135M-Instruct.Q4_1.gguf" in r.stderr
    assert "--model demo-random" in r.stderr
    assert not os.path.exists(tmp_path / "empty" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_sim_engine_takes_name_and_sizes_from_the_header(tiny_gguf: Path) -> None:
    from server.config import NodeSettings
    from server.engine import create_engine

    engine = create_engine(NodeSettings(engine="sim", model=str(tiny_gguf)))
    info = engine.info
    assert info.id == "tiny.Q4_1" and info.weight_bytes == tiny_gguf.stat().st_size
    assert info.source == f"gguf:{tiny_gguf.name}" and info.quantization == "q4_1" and "tiny.Q4_1.gguf" in info.note
