"""Write small GGUF files the way llama.cpp's converter does (q/k rows permuted for its
rotary layout, tokenizer as tokenizer.ggml.*), from a tiny random Hugging Face directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from server.gguf.weights import GgufWeights

# HF name pattern -> (GGUF name pattern, tensor type)
MIX = {
    "model.embed_tokens.weight": ("token_embd.weight", "Q8_0"),
    "model.norm.weight": ("output_norm.weight", "F32"),
    "lm_head.weight": ("output.weight", "F16"),
    "input_layernorm.weight": ("attn_norm.weight", "F32"),
    "post_attention_layernorm.weight": ("ffn_norm.weight", "F32"),
    "self_attn.q_proj.weight": ("attn_q.weight", "Q4_1"),
    "self_attn.k_proj.weight": ("attn_k.weight", "Q4_1"),
    "self_attn.v_proj.weight": ("attn_v.weight", "Q4_1"),
    "self_attn.o_proj.weight": ("attn_output.weight", "Q4_1"),
    "mlp.gate_proj.weight": ("ffn_gate.weight", "Q4_0"),
    "mlp.up_proj.weight": ("ffn_up.weight", "Q4_0"),
    "mlp.down_proj.weight": ("ffn_down.weight", "Q6_K"),
}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_q6_k(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Q6_K blocks (210 bytes per 256 weights) with random codes and a sane f16 scale: the
    gguf package can dequantize K-quants but not produce them."""
    blocks = rng.integers(0, 256, (rows, cols // 256, 210), dtype=np.uint8)
    blocks[..., 192:208] = rng.integers(-8, 8, (rows, cols // 256, 16)).astype(np.int8).view(np.uint8)
    blocks[..., 208:210] = np.array([0.002], dtype=np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def write_gguf(hf_dir: Path, out: Path, mix: dict[str, tuple[str, str]] = MIX, arch: str = "llama",
               types_override: dict[str, str] | None = None, seed: int = 0) -> Path:
    import gguf
    from gguf.quants import quantize
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    tensors = load_file(str(hf_dir / "model.safetensors"))
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(out), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv_: kv_[1])
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [t for t, _ in vocab]
    for content, i in added.items():
        if i >= len(tokens):
            tokens += ["<unused>"] * (i + 1 - len(tokens))
        tokens[i] = content
    tokens += [f"<pad{i}>" for i in range(cfg["vocab_size"] - len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in added else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(added["<|endoftext|>"])
    chat = json.loads((hf_dir / "tokenizer_config.json").read_text()).get("chat_template")
    if chat:
        w.add_chat_template(chat)
    for name, arr in tensors.items():
        short = name.split(".", 3)[-1] if name.startswith("model.layers.") else name
        if short not in mix:
            continue
        gname, qtype = mix[short]
        if name.startswith("model.layers."):
            gname = f"blk.{name.split('.')[2]}.{gname}"
        qtype = (types_override or {}).get(gname, qtype)
        arr = arr.astype(np.float32)
        if short == "self_attn.q_proj.weight":
            arr = permute(arr, heads)
        elif short == "self_attn.k_proj.weight":
            arr = permute(arr, kv)
        t = gguf.GGMLQuantizationType[qtype]
        if qtype == "F32":
            w.add_tensor(gname, arr)
        elif qtype == "F16":
            w.add_tensor(gname, arr.astype(np.float16))
        elif qtype == "Q6_K":
            w.add_tensor(gname, random_q6_k(*arr.shape, rng), raw_dtype=t)
        else:
            w.add_tensor(gname, quantize(arr, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out

class DenseOnly:
    """GGUF tensors with no int4 access: every matrix dequantized to float32 (the
    "dequantized float weights" the direct int4 path is compared against)."""

    def __init__(self, ws: GgufWeights):
        self.ws = ws

    def __contains__(self, name: str) -> bool:
        return name in self.ws

    def get(self, name: str) -> torch.Tensor:
        return self.ws.get(name)

    def maybe(self, name: str):
        return self.ws.maybe(name)
