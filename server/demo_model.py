"""The demo model: a tiny Llama-architecture model with RANDOM weights.

Built deterministically on first use under the user's cache directory, with a byte-level
BPE tokenizer trained locally on a fixed corpus. Nothing is downloaded. Its text is noise:
it exists so that a node, the router and the benchmarks can run end to end on any machine.

The same builder makes the fixtures of the test suite (``build_llama_dir``), so the test
models go through the real loading code of every engine.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEMO_MODEL_ID = "edgefleet-demo-random"
DEMO_VERSION = 1

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]

# ChatML with Hermes-style tool calls: what the `hermes` tool-call parser expects.
CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages and messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "You may call one or more functions. Function signatures are within <tools></tools>:\n"
    "<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n"
    "For each call return <tool_call>{\"name\": <name>, \"arguments\": <args>}</tool_call>"
    "<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}"
    "{% if not (tools and loop.first and m.role == 'system') %}"
    "<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% endif %}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments }}}</tool_call>"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A fixed corpus so that the trained tokenizer is the same on every machine.
_CORPUS_WORDS = (
    "the of and to in is that it for on as with was be by this are or at from an have not "
    "they which you one but all were we when there can been has more will their if no "
    "out so up what about into than them only its other some time two could these may "
    "then do first any my now such like our over man me even most made after also did "
    "many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men "
    "work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three "
    "model token request node fleet router latency capacity queue batch kernel memory "
    "agent tool call function weather city name arguments result json schema answer "
    "hello world please tell me a story about edge inference server gpu cpu fast slow"
).split()


@dataclass(frozen=True)
class TinyLlamaSpec:
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # True gives a Qwen2-shaped model
    architecture: str = "LlamaForCausalLM"
    seed: int = 0


def _corpus() -> list[str]:
    rng = np.random.default_rng(1234)
    lines = []
    for _ in range(4000):
        n = int(rng.integers(4, 16))
        words = [_CORPUS_WORDS[int(i)] for i in rng.integers(0, len(_CORPUS_WORDS), n)]
        punct = [".", ",", "?", "!", ":", '"}', "{\"", "0", "1", "2", "42"][int(rng.integers(0, 11))]
        lines.append(" ".join(words) + punct)
    lines.append('{"name": "get_weather", "arguments": {"city": "Paris"}} [1, 2, 3] true false null')
    return lines


def build_tokenizer(out_dir: Path, vocab_size: int) -> int:
    """Train a byte-level BPE tokenizer; write tokenizer.json and its config. Returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                      "normalized": False, "single_word": False}
            for t in SPECIAL_TOKENS
        },
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2))
    return tok.get_vocab_size()


def _weights(spec: TinyLlamaSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    h, i = spec.hidden_size, spec.intermediate_size
    head_dim = h // spec.num_attention_heads
    kv = spec.num_key_value_heads * head_dim

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    out = {"model.embed_tokens.weight": w(spec.vocab_size, h), "model.norm.weight": np.ones(h, np.float32)}
    for layer in range(spec.num_hidden_layers):
        p = f"model.layers.{layer}."
        out |= {
            p + "input_layernorm.weight": np.ones(h, np.float32),
            p + "post_attention_layernorm.weight": np.ones(h, np.float32),
            p + "self_attn.q_proj.weight": w(h, h),
            p + "self_attn.k_proj.weight": w(kv, h),
            p + "self_attn.v_proj.weight": w(kv, h),
            p + "self_attn.o_proj.weight": w(h, h),
            p + "mlp.gate_proj.weight": w(i, h),
            p + "mlp.up_proj.weight": w(i, h),
            p + "mlp.down_proj.weight": w(h, i),
        }
        if spec.attention_bias:
            out |= {p + "self_attn.q_proj.bias": w(h), p + "self_attn.k_proj.bias": w(kv),
                    p + "self_attn.v_proj.bias": w(kv)}
    if not spec.tie_word_embeddings:
        out["lm_head.weight"] = w(spec.vocab_size, h)
    return out


def build_llama_dir(out_dir: Path, spec: TinyLlamaSpec = TinyLlamaSpec(), model_id: str = DEMO_MODEL_ID) -> Path:
    """Write a complete Hugging Face model directory (config, tokenizer, safetensors)."""
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out_dir, spec.vocab_size)
    if vocab > spec.vocab_size:
        raise ValueError(f"tokenizer has {vocab} tokens, more than the model's {spec.vocab_size}")
    ids = json.loads((out_dir / "tokenizer.json").read_text())["added_tokens"]
    special = {t["content"]: t["id"] for t in ids}
    qwen = spec.architecture == "Qwen2ForCausalLM"
    config = {
        "architectures": [spec.architecture],
        "model_type": "qwen2" if qwen else "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.hidden_size // spec.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": "float32",
        "bos_token_id": special["<|endoftext|>"],
        "eos_token_id": special["<|im_end|>"],
        "pad_token_id": special["<|endoftext|>"],
        "edgefleet_random_weights": True,
        "edgefleet_model_id": model_id,
    }
    if not qwen:
        config["attention_bias"] = spec.attention_bias
        config["mlp_bias"] = False
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [special["<|im_end|>"], special["<|endoftext|>"]],
         "bos_token_id": special["<|endoftext|>"], "do_sample": True}, indent=2))
    save_file(_weights(spec), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "README.md").write_text(
        f"# {model_id}\n\nRANDOM WEIGHTS. Built locally by edgefleet for demos and tests; "
        f"its output is noise.\n\nSpec: {json.dumps(asdict(spec))}\n")
    return out_dir


def cache_dir() -> Path:
    base = os.environ.get("EDGEFLEET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgefleet")
    return Path(base)


def ensure_demo_model() -> Path:
    """Return the demo model directory, building it once (atomically) if missing."""
    spec = TinyLlamaSpec()
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:8]
    target = cache_dir() / "models" / f"{DEMO_MODEL_ID}-v{DEMO_VERSION}-{digest}"
    if (target / "model.safetensors").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    build_llama_dir(tmp, spec)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; theirs is identical
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_random_weights(model_dir: Path) -> bool:
    try:
        return bool(json.loads((model_dir / "config.json").read_text()).get("edgefleet_random_weights"))
    except (OSError, ValueError):
        return False
