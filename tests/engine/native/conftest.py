"""Tiny random Llama / Qwen2 checkpoints and helpers to drive the native engine offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import NodeSettings
from server.demo_model import TinyLlamaSpec, build_llama_dir
from server.engine.base import GenerateRequest, SamplingOptions

LLAMA = TinyLlamaSpec(hidden_size=128, intermediate_size=256, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, seed=1)
QWEN = TinyLlamaSpec(hidden_size=128, intermediate_size=256, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, seed=2,
                     architecture="Qwen2ForCausalLM", attention_bias=True, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return build_llama_dir(tmp_path_factory.mktemp("llama"), LLAMA)


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory) -> Path:
    return build_llama_dir(tmp_path_factory.mktemp("qwen2"), QWEN)


def make_core(model_dir: Path, dtype: str = "float32", quantization: str | None = None, **opts):
    from server.engine.native.setup import build_engine

    settings = NodeSettings(engine="native", dtype=dtype, quantization=quantization,
                            max_model_len=opts.pop("max_model_len", 512),
                            max_num_seqs=opts.pop("max_num_seqs", 8),
                            kv_cache_gb=opts.pop("kv_cache_gb", None), engine_options=opts)
    return build_engine(settings, model_dir, "tiny").core


def greedy(max_tokens: int = 12, **kw) -> SamplingOptions:
    return SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


def run_all(core, prompts: list[list[int]], sampling: SamplingOptions | list[SamplingOptions],
            stagger: bool = False) -> dict[str, list]:
    """Drive LLMEngine.step until every request finished; returns deltas per request id."""
    samplings = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
    out: dict[str, list] = {}
    pending = [GenerateRequest(f"r{i}", p, s) for i, (p, s) in enumerate(zip(prompts, samplings))]
    for req in (pending[:1] if stagger else pending):
        core.add_request(req)
        out[req.request_id] = []
    pending = pending[1:] if stagger else []
    while core.has_work() or pending:
        if pending:  # one new arrival per step: mixes prefills into running decodes
            core.add_request(pending[0])
            out[pending.pop(0).request_id] = []
        for rid, delta in core.step():
            out[rid].append(delta)
    return out


def tokens_of(deltas) -> list[int]:
    return [t for d in deltas for t in d.token_ids]
