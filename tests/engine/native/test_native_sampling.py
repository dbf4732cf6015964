"""Sampler and detokenizer: seeds, filters, penalties, logprobs, stop strings."""

from __future__ import annotations

import math

import torch

from server.engine.base import SamplingOptions
from server.engine.native.detok import IncrementalDetokenizer
from server.engine.native.sampler import SamplingRow, sample

from .conftest import make_core, run_all, tokens_of


def make_row(generator=None, prompt_ids=None, output_ids=(), **options) -> SamplingRow:
    return SamplingRow(SamplingOptions(max_tokens=16, **options), generator, prompt_ids, list(output_ids))


def logits(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_greedy_and_logprobs_of_raw_distribution():
    x = logits([0.0, 2.0, 1.5, -1.0])
    [r] = sample(x.clone(), [make_row(temperature=0.0, logprobs=2, repetition_penalty=2.0,
                                         prompt_ids=[1], output_ids=[])])
    assert r.token_id == 2  # the penalty halved token 1 to 1.0
    lp = torch.log_softmax(x, -1)
    assert math.isclose(r.logprob, float(lp[0, 2]), rel_tol=1e-6)
    assert [t for t, _ in r.top] == [1, 2]


def test_top_k_one_and_tiny_top_p_are_greedy():
    x = logits([0.1, 3.0, 2.9, 0.0], [5.0, 0.0, 4.9, 0.0])
    rows = [make_row(temperature=1.0, top_k=1), make_row(temperature=1.0, top_p=0.01)]
    for _ in range(20):
        assert [r.token_id for r in sample(x.clone(), rows)] == [1, 0]


def test_min_p_removes_unlikely_tokens():
    x = logits([4.0, 3.9, -5.0, -5.0])
    seen = {sample(x.clone(), [make_row(min_p=0.5)])[0].token_id for _ in range(200)}
    assert seen <= {0, 1} and len(seen) == 2


def test_presence_and_frequency_penalties_and_logit_bias():
    x = logits([1.0, 1.0, 1.0])
    row = make_row(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.2, output_ids=[0, 0, 1])
    assert sample(x.clone(), [row])[0].token_id == 2
    assert sample(x.clone(), [make_row(temperature=0.0, logit_bias={1: 5.0})])[0].token_id == 1


def test_seed_reproducible_whatever_the_batch():
    torch.manual_seed(0)
    x = torch.randn(1, 300)

    def draw(batch_size):
        g = torch.Generator().manual_seed(1234)
        rows = [make_row(generator=g)] + [make_row() for _ in range(batch_size - 1)]
        out = []
        for _ in range(10):
            out.append(sample(x.repeat(batch_size, 1), rows)[0].token_id)
        return out

    assert draw(1) == draw(5)
    assert len(set(draw(1))) > 1  # it really samples


class FakeTokenizer:
    """Each id >= 2 is one letter; ids 0 and 1 are special (skipped)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(96 + i) for i in ids if i >= 2)


def test_stop_string_is_cut_and_held_back():
    d = IncrementalDetokenizer(FakeTokenizer(), [], stop=["cd"])
    assert d.add(2) is None  # "b": the last len("cd") - 1 characters are held back
    assert d.take(False) == ""
    assert d.add(0) is None  # special: no text
    assert d.add(3) is None  # "bc": "c" may start "cd"
    assert d.take(False) == "b"
    assert d.add(4) == "cd"
    assert d.take(True) == ""
    assert d.text == "b"


def test_stop_string_included_when_asked():
    d = IncrementalDetokenizer(FakeTokenizer(), [], stop=["cd"], include_stop=True)
    for t in (2, 3, 4):
        hit = d.add(t)
    assert hit == "cd" and d.take(True) == "bcd"


def test_engine_stop_strings_seed_and_length(llama_dir):
    core = make_core(llama_dir)
    tok = core.tokenizer
    prompt = tok.encode("hello world please tell me")
    free = run_all(core, [prompt], SamplingOptions(max_tokens=16, temperature=0.0, ignore_eos=True))["r0"]
    text = "".join(d.text for d in free)
    assert free[-1].finish_reason == "length" and free[-1].completion_tokens == 16
    assert text == tok.decode(tokens_of(free), skip_special_tokens=True)
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if stop.strip():
        cut = run_all(core, [prompt], SamplingOptions(max_tokens=16, temperature=0.0, ignore_eos=True,
                                                      stop=[stop]))["r0"]
        assert cut[-1].finish_reason == "stop" and cut[-1].stop_reason == stop
        assert "".join(d.text for d in cut) == text[:text.index(stop)]
    seeded = [SamplingOptions(max_tokens=8, temperature=1.0, seed=7, ignore_eos=True)] * 3
    a = run_all(core, [prompt] * 3, seeded)
    assert tokens_of(a["r0"]) == tokens_of(a["r1"]) == tokens_of(a["r2"])
    eos = next(iter(core.eos_token_ids))
    stopped = run_all(core, [prompt], SamplingOptions(max_tokens=8, temperature=0.0,
                                                      logit_bias={eos: 100.0}))["r0"]
    assert stopped[-1].finish_reason == "stop" and stopped[-1].completion_tokens == 1
    assert stopped[-1].text == ""
