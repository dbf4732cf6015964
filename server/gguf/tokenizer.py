"""The tokenizer a GGUF file carries (``tokenizer.ggml.*``) as a Hugging Face tokenizer.

Only byte-level BPE (``tokenizer.ggml.model == "gpt2"``: GPT-2, Llama 3, SmolLM, Qwen) is
rebuilt; SentencePiece-style vocabularies raise GgufError. Control tokens become special
tokens. As in the models' own Hugging Face tokenizers, no BOS is prepended: chat templates
write their own markers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .reader import GgufError, GgufFile

CONTROL = 3  # llama.cpp's token type for control tokens
# The end-of-turn markers of common chat templates: generation stops at them.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def _tokens(g: GgufFile) -> list[str]:
    return list(g.metadata.get("tokenizer.ggml.tokens") or [])


def special_ids(g: GgufFile) -> dict[str, Any]:
    """bos (int | None) and eos (list of ids: the file's eos plus the chat template's
    end-of-turn marker, which is what an instruct model actually emits)."""
    tokens = _tokens(g)
    index = {t: i for i, t in enumerate(tokens)}
    meta = g.metadata
    eos: list[int] = []
    template = meta.get("tokenizer.chat_template") or ""
    for marker in END_OF_TURN:
        if marker in template and marker in index:
            eos.append(index[marker])
            break
    file_eos = meta.get("tokenizer.ggml.eos_token_id")
    if isinstance(file_eos, int) and file_eos not in eos:
        eos.append(file_eos)
    bos = meta.get("tokenizer.ggml.bos_token_id")
    return {"bos": bos if isinstance(bos, int) else None, "eos": eos}


def build_tokenizer(g: GgufFile):
    """A ``tokenizers.Tokenizer`` equal to the one the file describes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = g.metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise GgufError(g.path, f"unsupported tokenizer model {model!r} (edgefleet rebuilds byte-level "
                        "BPE, tokenizer.ggml.model = 'gpt2')")
    tokens = _tokens(g)
    merges = [tuple(m.split(" ", 1)) for m in g.metadata.get("tokenizer.ggml.merges") or []]
    if any(len(m) != 2 for m in merges):
        raise GgufError(g.path, "corrupt tokenizer: a merge is not two tokens")
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    types = g.metadata.get("tokenizer.ggml.token_type") or []
    specials = [tokens[i] for i, t in enumerate(types) if t == CONTROL]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def write_tokenizer_files(g: GgufFile, out_dir: Path) -> None:
    """tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json."""
    tokens = _tokens(g)
    tok = build_tokenizer(g)
    tok.save(str(out_dir / "tokenizer.json"))
    ids = special_ids(g)
    eos = tokens[ids["eos"][0]] if ids["eos"] else None
    bos = tokens[ids["bos"]] if ids["bos"] is not None else None
    pad_id = g.metadata.get("tokenizer.ggml.padding_token_id")
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos, "eos_token": eos,
        "pad_token": tokens[pad_id] if isinstance(pad_id, int) and pad_id < len(tokens) else eos,
        "unk_token": None,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": int(g.arch("context_length", 4096)),
    }
    template = g.metadata.get("tokenizer.chat_template")
    if template:
        cfg["chat_template"] = template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token") if cfg[k]}, indent=2))
