"""Greedy tokens identical to Hugging Face transformers; logits within dtype tolerances."""

from __future__ import annotations

import pytest
import torch

from .conftest import greedy, make_core, run_all, tokens_of

# Shared prefixes on purpose: prefix caching has something to hit.
BASE = list(range(20, 60))
PROMPTS = [BASE[:5], BASE[:37], BASE + [7, 8, 9], [300, 301, 302] + BASE[:20], BASE[:17] + [400]]
MAX_TOKENS = 10

# Max |ours - HF| relative to max |HF logit|: fp32 is exact up to reduction order; bf16
# and fp16 round every activation (8 and 11 mantissa bits), and are compared to HF run in
# the same dtype.
LOGIT_TOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 6e-2}


@pytest.fixture(scope="module")
def hf_cache():
    return {}


def hf_model(model_dir, dtype, cache):
    key = (str(model_dir), dtype)
    if key not in cache:
        from transformers import AutoModelForCausalLM
        cache[key] = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    return cache[key]


def hf_greedy(model, prompt, n):
    """Plain argmax loop: generate() would mask EOS (min_new_tokens), we ignore it instead."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_and_ref(request, hf_cache):
    model_dir = request.getfixturevalue(f"{request.param}_dir")
    hf = hf_model(model_dir, "float32", hf_cache)
    return model_dir, [hf_greedy(hf, p, MAX_TOKENS) for p in PROMPTS]


@pytest.mark.parametrize("prefix,chunked,batch,stagger", [
    (True, True, 5, False), (False, True, 5, True), (True, False, 5, True),
    (False, False, 1, False), (True, True, 2, True),
])
def test_greedy_matches_transformers(model_and_ref, prefix, chunked, batch, stagger):
    model_dir, expected = model_and_ref
    core = make_core(model_dir, block_size=8, enable_prefix_caching=prefix,
                     enable_chunked_prefill=chunked, max_num_batched_tokens=16 if chunked else 64)
    got = {}
    for i in range(0, len(PROMPTS), batch):
        got |= {int(k[1:]) + i: tokens_of(v) for k, v in
                run_all(core, PROMPTS[i:i + batch], greedy(MAX_TOKENS), stagger).items()}
    assert [got[i] for i in range(len(PROMPTS))] == expected
    if prefix:  # the repeated BASE prefix was served from cache at least once
        assert core.block_manager.hash_to_block


def test_preemption_keeps_greedy_output(llama_dir, hf_cache):
    hf = hf_model(llama_dir, "float32", hf_cache)
    expected = [hf_greedy(hf, p, 24) for p in PROMPTS[:4]]
    # 14 blocks of 8 tokens cannot hold four sequences of ~60 tokens: forces preemption.
    core = make_core(llama_dir, block_size=8, kv_cache_gb=14 * 2 * 2 * 8 * 2 * 32 * 4 / (1 << 30),
                     max_num_batched_tokens=64, max_model_len=96)
    assert core.config.num_blocks == 14
    out = run_all(core, PROMPTS[:4], greedy(24))
    assert [tokens_of(out[f"r{i}"]) for i in range(4)] == expected
    assert core.scheduler.num_preemptions > 0
    assert core.block_manager.num_free_blocks == 14


def prefill_logits(core, prompt):
    from server.engine.base import GenerateRequest
    core.add_request(GenerateRequest("x", prompt, greedy(1)))
    batch = core.scheduler.schedule()
    logits, _ = core.runner.forward_logits(batch)
    core.abort("x")
    return logits[0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_logits_within_dtype_tolerance(request, hf_cache, arch, dtype):
    model_dir = request.getfixturevalue(f"{arch}_dir")
    hf = hf_model(model_dir, dtype, hf_cache)
    prompt = PROMPTS[2]
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0, -1].float()
    ours = prefill_logits(make_core(model_dir, dtype=dtype), prompt)
    err = (ours - ref).abs().max() / ref.abs().max()
    assert err < LOGIT_TOL[dtype], f"{arch} {dtype}: relative error {err:.2e}"
