"""Whole-sequence logits from a native-engine model (one prefill, no scheduler) and from a
transformers model, for perplexity and agreement checks."""

from __future__ import annotations

import math

import torch

from server.engine.native.attention import AttentionMetadata, PrefillChunk


@torch.inference_mode()
def native_logits(loaded, ids: list[int], block_size: int = 16) -> torch.Tensor:
    """float32 [len(ids), vocab]: the logits after every position."""
    c = loaded.config
    n = len(ids)
    blocks = -(-n // block_size)
    caches = [torch.zeros((2, blocks, block_size, c.num_kv_heads, c.head_dim), dtype=loaded.dtype)
              for _ in range(c.num_layers)]
    meta = AttentionMetadata(torch.arange(n), prefills=[PrefillChunk(0, n, n, torch.arange(blocks))])
    rows = torch.arange(n)
    return loaded.model(torch.tensor(ids), torch.arange(n), caches, meta, rows).float()


def perplexity(logits: torch.Tensor, ids: list[int]) -> float:
    """exp(mean negative log-likelihood of ids[1:] given the prefix)."""
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    nll = -logp.gather(1, torch.tensor(ids[1:])[:, None]).mean().item()
    return math.exp(nll)


def windowed_perplexity(logits_fn, ids: list[int], window: int) -> float:
    """Perplexity over non-overlapping windows (each window scored from its own start)."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window]
        if len(chunk) < 2:
            break
        logp = torch.log_softmax(logits_fn(chunk)[:-1].float(), dim=-1)
        total += -logp.gather(1, torch.tensor(chunk[1:])[:, None]).sum().item()
        count += len(chunk) - 1
    return math.exp(total / count)
