"""Workload prompts: random (token-exact), ShareGPT-format JSON, JSONL of prompts.

Everything is seeded: the same ``--seed`` gives the same prompts in the same order, so two
endpoints (or two runs) see identical work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.client import SampleRequest


def load_tokenizer(path: str | Path | None) -> Any:
    """A local Hugging Face tokenizer directory; never downloads anything."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"tokenizer {str(path)!r} is not a local directory (no downloads are made); "
                         "pass --tokenizer DIR holding tokenizer.json")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)


def exact_prompt(tokenizer: Any, token_ids: list[int], target: int, rng: np.random.Generator,
                 allowed: np.ndarray) -> tuple[str, int]:
    """Text that re-tokenizes to exactly ``target`` tokens.

    Decoding N ids and encoding the text back need not give N ids (merges across token
    boundaries); trim or extend and retry, as vLLM's random dataset does.
    """
    ids = list(token_ids)
    for _ in range(20):
        text = tokenizer.decode(ids)
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == target:
            return text, target
        if len(ids) > target:
            ids = ids[:target]
        else:
            ids += allowed[rng.integers(0, len(allowed), target - len(ids))].tolist()
    text = tokenizer.decode(ids)
    return text, len(tokenizer.encode(text, add_special_tokens=False))


def allowed_ids(tokenizer: Any) -> np.ndarray:
    """Token ids that decode to clean text on their own.

    Byte-level vocabularies hold fragments of multi-byte characters; they decode to U+FFFD,
    which does not encode back to the same ids, and exact lengths would never converge.
    """
    if hasattr(tokenizer, "allowed_ids"):  # a remote tokenizer picks its own candidates
        return tokenizer.allowed_ids()
    special = set(tokenizer.all_special_ids)
    ids = []
    for i in range(tokenizer.vocab_size):
        if i in special:
            continue
        piece = tokenizer.decode([i])
        if piece and "\ufffd" not in piece and piece.isprintable():
            ids.append(i)
    return np.array(ids)


def random_requests(tokenizer: Any, num_prompts: int, input_len: int, output_len: int,
                    range_ratio: float = 0.0, seed: int = 0, prefix_len: int = 0) -> list[SampleRequest]:
    """Random-token prompts of exact length (for the completions API: no template added)."""
    if tokenizer is None:
        raise ValueError("the random dataset needs the model's tokenizer: pass --tokenizer DIR")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError("--random-range-ratio must be in [0, 1)")
    rng = np.random.default_rng(seed)
    allowed = allowed_ids(tokenizer)
    lo_in, hi_in = int(input_len * (1 - range_ratio)), int(input_len * (1 + range_ratio))
    lo_out, hi_out = int(output_len * (1 - range_ratio)), int(output_len * (1 + range_ratio))
    in_lens = rng.integers(max(lo_in, 1), hi_in + 1, num_prompts)
    out_lens = rng.integers(max(lo_out, 1), hi_out + 1, num_prompts)
    prefix = allowed[rng.integers(0, len(allowed), prefix_len)].tolist() if prefix_len else []
    out = []
    for n_in, n_out in zip(in_lens, out_lens):
        n_in = int(n_in) + prefix_len
        body = allowed[rng.integers(0, len(allowed), n_in - prefix_len)].tolist()
        text, n = exact_prompt(tokenizer, prefix + body, n_in, rng, allowed)
        out.append(SampleRequest(text, n, int(n_out)))
    return out


def random_text(tokenizer: Any, n_tokens: int, rng: np.random.Generator) -> tuple[str, int]:
    """A token-exact random text (tool results in agent chains)."""
    allowed = allowed_ids(tokenizer)
    return exact_prompt(tokenizer, allowed[rng.integers(0, len(allowed), n_tokens)].tolist(), n_tokens,
                        rng, allowed)


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False)) if tokenizer is not None else 0


def sharegpt_requests(path: str | Path, num_prompts: int, tokenizer: Any, output_len: int | None,
                      seed: int = 0) -> list[SampleRequest]:
    """ShareGPT format: ``[{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}]``.

    The first turn is the prompt; the reference answer's token count is the output length
    unless ``output_len`` is given. Conversations with fewer than two turns are skipped.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: a ShareGPT file is a JSON list of conversations")
    pairs = []
    for item in data:
        conv = item.get("conversations") or item.get("conversation") or []
        if len(conv) >= 2 and conv[0].get("value") and conv[1].get("value") is not None:
            pairs.append((conv[0]["value"], conv[1]["value"]))
    if not pairs:
        raise ValueError(f"{path}: no conversation with at least two turns")
    if output_len is None and tokenizer is None:
        raise ValueError("ShareGPT without --sharegpt-output-len needs --tokenizer to size the answers")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    out = []
    for i in range(num_prompts):  # oversample (cycle) when the file is short, as vLLM does
        prompt, answer = pairs[int(order[i % len(pairs)])]
        n_out = output_len if output_len is not None else max(_count(tokenizer, answer), 1)
        out.append(SampleRequest(prompt, _count(tokenizer, prompt), n_out))
    return out


def jsonl_requests(path: str | Path, num_prompts: int, tokenizer: Any, output_len: int | None,
                   seed: int = 0, shuffle: bool = True) -> list[SampleRequest]:
    """One JSON object per line with ``prompt`` (and optionally ``output_tokens``): vLLM's `custom`."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{path}:{n}: each line must be an object with a string 'prompt'")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts")
    order = np.random.default_rng(seed).permutation(len(rows)) if shuffle else np.arange(len(rows))
    out = []
    for i in range(num_prompts):
        row = rows[int(order[i % len(rows)])]
        n_out = output_len if output_len is not None else row.get("output_tokens")
        if n_out is None:
            raise ValueError(f"{path}: a line has no 'output_tokens' and no --custom-output-len was given")
        out.append(SampleRequest(row["prompt"], _count(tokenizer, row["prompt"]), int(n_out)))
    return out
