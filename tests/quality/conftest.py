"""Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched once through the model cache
(``server.model_cache``: the same function the node uses; later runs find it cached)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data" / "us_founding_documents.txt"
# (question, answer SmolLM2-135M gets right greedily; None: it does not, agreement only)
QUESTIONS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is 2 + 3?", "5"),
    ("What is the capital of Italy?", None),
    ("What is 10 - 4?", None),
]
MAX_TOKENS = 16



@pytest.fixture(scope="session")
def smollm2() -> Path:
    from server.model_cache import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def smollm2_parts(smollm2: Path):
    """(metadata dir, GgufWeights, HF tokenizer)."""
    from transformers import AutoTokenizer

    from server.gguf.convert import metadata_dir
    from server.gguf.weights import GgufWeights

    meta, g, _ = metadata_dir(smollm2)
    return meta, GgufWeights(g), AutoTokenizer.from_pretrained(str(meta))


@pytest.fixture(scope="session")
def text_ids(smollm2_parts) -> list[int]:
    _, _, tok = smollm2_parts
    return tok.encode(DATA.read_text(), add_special_tokens=False)


@pytest.fixture(scope="session")
def smollm2_native_node(smollm2, tmp_path_factory):
    """One native-engine node serving the DEFAULT model (no --model), float32 as chosen for it."""
    from tests.nodeproc import NodeProcess

    tmp = tmp_path_factory.mktemp("smollm2-native")
    proc = NodeProcess("--engine", "native", "--max-model-len", "2048", "--kv-cache-gb", "0.25",
                       "--max-num-seqs", "4", "--state-dir", str(tmp / "state"), log_path=tmp / "node.log")
    try:
        proc.wait_ready(model="SmolLM2-135M-Instruct")
        yield proc
    finally:
        proc.stop()


def chat_ids(tok, question: str) -> list[int]:
    out = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)
    return list(out["input_ids"])


@pytest.fixture(scope="session")
def transformers_answers(smollm2_parts) -> dict[str, list[int]]:
    """transformers' own generate() on the dequantized float weights (loaded in memory)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    meta, ws, tok = smollm2_parts
    model = LlamaForCausalLM(LlamaConfig(**json.loads((meta / "config.json").read_text()))).eval()
    result = model.load_state_dict({n: ws.get(n) for n in ws.keys()}, strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys  # tied embeddings
    model.tie_weights()
    out = {}
    eos = json.loads((meta / "generation_config.json").read_text())["eos_token_id"]
    with torch.inference_mode():
        for q, _ in QUESTIONS:
            ids = torch.tensor([chat_ids(tok, q)])
            gen = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=eos,
                                 pad_token_id=eos[0])
            new = gen[0, ids.shape[1]:].tolist()
            out[q] = [t for t in new if t not in eos]
    return out
