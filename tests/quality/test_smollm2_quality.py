"""Quality on real weights: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0).

Perplexity on a fixed public-domain text (tests/quality/data), greedy answers that agree
across implementations of the same weights, and the node's structured paths end to end.
One native node and one vLLM node for the whole module; the in-process models are loaded
one at a time. Figures for the whole text: ``python -m benchmarks.gguf_quality``.
"""

from __future__ import annotations

import pytest
import torch

from server.engine.native.loader import load_model
from tests.gguf.tinygguf import DenseOnly
from tests.quality.conftest import MAX_TOKENS, QUESTIONS, chat_ids
from tests.quality.lm import native_logits, windowed_perplexity

pytestmark = pytest.mark.e2e

WINDOW = 1024  # the first window of the text: ~1 s per forward, the whole text is the script's job


@pytest.fixture(scope="module")
def window(text_ids) -> list[int]:
    assert len(text_ids) > 2500  # "a few thousand tokens"
    return text_ids[:WINDOW]


@pytest.fixture(scope="module")
def dense_ppl(smollm2_parts, window) -> float:
    meta, ws, _ = smollm2_parts
    lm = load_model(meta, "float32", None, "cpu", 2048, {}, weights=DenseOnly(ws))
    return windowed_perplexity(lambda c: native_logits(lm, c), window, WINDOW)


def test_dequantized_model_is_a_language_model(dense_ppl) -> None:
    assert 5 < dense_ppl < 25  # measured 13.6 on the whole text; random weights give ~50,000


def test_direct_q4_1_equals_the_dequantized_model(smollm2_parts, window, dense_ppl) -> None:
    meta, ws, _ = smollm2_parts
    lm = load_model(meta, "float32", None, "cpu", 2048, {}, weights=ws)
    assert lm.quantization == "gguf-q4_1" and lm.weight_bytes < 0.4 * 538_060_032  # blocks, not floats
    ppl = windowed_perplexity(lambda c: native_logits(lm, c), window, WINDOW)
    assert abs(ppl - dense_ppl) / dense_ppl < 1e-4, (ppl, dense_ppl)


@pytest.mark.parametrize("quant, group, bound", [
    ("int8", None, 1.05),  # measured +1.1 % on the whole text
    ("int4", 32, 2.2),  # measured +71 %: 4-bit on top of 4-bit, with integer zeros (see docs)
    ("int4", 64, 2.5),  # measured +97 %
])
def test_on_load_quantization_of_the_float_model_is_bounded(smollm2_parts, window, dense_ppl, quant, group,
                                                            bound) -> None:
    meta, ws, _ = smollm2_parts
    opts = {"int4_group_size": group} if group else {}
    lm = load_model(meta, "float32", quant, "cpu", 2048, opts, weights=DenseOnly(ws))
    ppl = windowed_perplexity(lambda c: native_logits(lm, c), window, WINDOW)
    assert dense_ppl <= ppl * 1.01 and ppl < dense_ppl * bound, (quant, group, ppl, dense_ppl)


def test_int4_g128_does_not_divide_the_hidden_size(smollm2_parts) -> None:
    meta, ws, _ = smollm2_parts
    with pytest.raises(ValueError, match="576 is not a multiple of group size 128"):
        load_model(meta, "float32", "int4", "cpu", 2048, {"int4_group_size": 128}, weights=DenseOnly(ws))


def test_native_fp32_greedy_agrees_with_transformers(smollm2, smollm2_parts, transformers_answers) -> None:
    from server.config import NodeSettings
    from server.engine.base import GenerateRequest, SamplingOptions
    from server.engine.native.setup import build_engine

    _, _, tok = smollm2_parts
    settings = NodeSettings(engine="native", dtype="float32", max_model_len=512, max_num_seqs=8, kv_cache_gb=0.1)
    core = build_engine(settings, smollm2, "smol").core
    for i, (q, _) in enumerate(QUESTIONS):
        core.add_request(GenerateRequest(f"q{i}", chat_ids(tok, q), SamplingOptions(max_tokens=MAX_TOKENS,
                                                                                   temperature=0.0)))
    got: dict[str, list[int]] = {f"q{i}": [] for i in range(len(QUESTIONS))}
    while core.has_work():
        for rid, delta in core.step():
            got[rid] += delta.token_ids
    for i, (q, answer) in enumerate(QUESTIONS):
        native = [t for t in got[f"q{i}"] if t != tok.convert_tokens_to_ids("<|im_end|>")]
        assert native == transformers_answers[q], (q, tok.decode(native), tok.decode(transformers_answers[q]))
        if answer:
            assert answer in tok.decode(native), (q, tok.decode(native))
