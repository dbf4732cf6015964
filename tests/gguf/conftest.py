from __future__ import annotations

from pathlib import Path

import pytest

from server.demo_model import TinyLlamaSpec, build_llama_dir
from tests.gguf.tinygguf import write_gguf

SPEC = TinyLlamaSpec(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                     vocab_size=1024, seed=3)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    return build_llama_dir(tmp_path_factory.mktemp("tiny-hf"), SPEC)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_hf: Path, tmp_path_factory) -> Path:
    return write_gguf(tiny_hf, tmp_path_factory.mktemp("tiny-gguf") / "tiny.Q4_1.gguf")


@pytest.fixture(autouse=True)
def model_cache(tmp_path_factory, monkeypatch):
    """Conversions land in a cache of the test session's own."""
    monkeypatch.setenv("EDGEFLEET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgefleet-cache"))
