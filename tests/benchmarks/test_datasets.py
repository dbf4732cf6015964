"""Datasets: token-exact random prompts, ShareGPT JSON, JSONL; all seeded."""

from __future__ import annotations

import json

import pytest

from benchmarks.datasets import jsonl_requests, load_tokenizer, random_requests, random_text, sharegpt_requests


@pytest.fixture(scope="module")
def tok(demo_model_dir):
    return load_tokenizer(demo_model_dir)


@pytest.mark.parametrize("length", [1, 7, 128, 700])
def test_random_prompts_are_token_exact(tok, length):
    reqs = random_requests(tok, 20, length, 16, seed=5)
    for r in reqs:
        assert r.prompt_len == length
        assert len(tok.encode(r.prompt, add_special_tokens=False)) == length
        assert r.output_len == 16
        assert "\ufffd" not in r.prompt


def test_random_is_seeded_and_ranged(tok):
    a = random_requests(tok, 30, 64, 32, range_ratio=0.5, seed=1)
    b = random_requests(tok, 30, 64, 32, range_ratio=0.5, seed=1)
    c = random_requests(tok, 30, 64, 32, range_ratio=0.5, seed=2)
    assert [r.prompt for r in a] == [r.prompt for r in b]
    assert [r.prompt for r in a] != [r.prompt for r in c]
    assert all(32 <= r.prompt_len <= 96 and 16 <= r.output_len <= 48 for r in a)
    assert len({r.prompt_len for r in a}) > 5
    for r in a:
        assert len(tok.encode(r.prompt, add_special_tokens=False)) == r.prompt_len


def test_random_prefix_is_shared(tok):
    reqs = random_requests(tok, 5, 40, 8, seed=0, prefix_len=20)
    assert all(r.prompt_len == 60 for r in reqs)
    firsts = {tuple(tok.encode(r.prompt, add_special_tokens=False)[:15]) for r in reqs}
    assert len(firsts) == 1


def test_random_needs_tokenizer_and_tool_text_exact(tok):
    with pytest.raises(ValueError, match="tokenizer"):
        random_requests(None, 1, 8, 8)
    import numpy as np

    text, n = random_text(tok, 33, np.random.default_rng(0))
    assert n == 33 and len(tok.encode(text, add_special_tokens=False)) == 33


def test_tokenizer_must_be_local(tmp_path):
    with pytest.raises(ValueError, match="local directory"):
        load_tokenizer("meta-llama/Llama-3-8B")


def test_sharegpt(tmp_path, tok):
    data = [{"conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": "an answer " * i}]}
            for i in range(1, 6)] + [{"conversations": [{"from": "human", "value": "lonely"}]}]
    p = tmp_path / "sg.json"
    p.write_text(json.dumps(data))
    reqs = sharegpt_requests(p, 5, tok, None, seed=0)
    assert sorted(r.prompt for r in reqs) == [f"question {i}" for i in range(1, 6)]  # the 1-turn entry is skipped
    for r in reqs:
        i = int(r.prompt.split()[1])
        assert r.output_len == len(tok.encode("an answer " * i, add_special_tokens=False))
        assert r.prompt_len == len(tok.encode(r.prompt, add_special_tokens=False))
    assert [r.output_len for r in sharegpt_requests(p, 7, None, 12)] == [12] * 7  # cycles, fixed length
    with pytest.raises(ValueError, match="tokenizer"):
        sharegpt_requests(p, 2, None, None)


def test_jsonl(tmp_path, tok):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": f"p{i}", "output_tokens": i + 1}) for i in range(4)) + "\n\n")
    reqs = jsonl_requests(p, 4, tok, None, seed=3)
    assert sorted((r.prompt, r.output_len) for r in reqs) == [("p0", 1), ("p1", 2), ("p2", 3), ("p3", 4)]
    assert [r.prompt for r in jsonl_requests(p, 4, tok, None, seed=3)] == [r.prompt for r in reqs]
    assert all(r.output_len == 9 for r in jsonl_requests(p, 6, None, 9))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="prompt"):
        jsonl_requests(bad, 1, None, 4)
