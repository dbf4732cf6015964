"""Decode steps as CUDA graphs: one graph per batch-size bucket, replayed on static buffers.

At batch 1 a decode step of an 8B model is ~500 small kernel launches; launched one by one
from Python they take longer than the GPU needs to read the weights. A CUDA graph replays
the whole step with one launch. Graphs need fixed shapes and fixed addresses, so:

- inputs live in static buffers sized for the largest bucket; a step with ``n`` sequences
  copies its inputs into the first ``n`` rows and runs the smallest bucket ``>= n``;
- block tables are padded to the longest possible sequence (``max_model_len``), and the
  attention kernel reads each row's real length from ``context_lens``;
- padding rows point at a scratch KV block that no sequence owns (the runner allocates one
  block more than the block manager hands out), with context length 1, so whatever they
  compute lands nowhere that matters. They are reset before every replay: stale slots from
  an earlier, wider step would otherwise write into another sequence's cache.

Only steps where every sequence decodes one token use graphs; prefill and mixed steps run
eagerly. Sampling stays outside the graph (it is per-request Python).

``replay="eager"`` runs the same static-buffer path without capturing, which is how the
CPU test suite checks the padding and bucketing logic against the plain path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import ops
from .attention import AttentionMetadata

BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def bucket_sizes(max_num_seqs: int) -> list[int]:
    return [b for b in BUCKETS if b < max_num_seqs] + [max_num_seqs]


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor], block_size: int,
                 max_num_seqs: int, max_model_len: int, scratch_block: int, dtype: torch.dtype,
                 replay: str = "cuda"):
        if replay not in ("cuda", "eager"):
            raise ValueError(f"decode graph replay must be 'cuda' or 'eager', not {replay!r}")
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.buckets = bucket_sizes(max_num_seqs)
        self.max_blocks = -(-max_model_len // block_size)
        self.scratch_block = scratch_block
        self.dtype = dtype
        self.replay_mode = replay
        dev = kv_caches[0].device
        self.device = dev
        b = self.buckets[-1]
        self.ids = torch.zeros(b, dtype=torch.long, device=dev)
        self.positions = torch.zeros(b, dtype=torch.long, device=dev)
        self.slots = torch.full((b,), scratch_block * block_size, dtype=torch.long, device=dev)
        self.tables = torch.full((b, self.max_blocks), scratch_block, dtype=torch.int32, device=dev)
        self.context_lens = torch.ones(b, dtype=torch.int32, device=dev)
        self.rows = torch.arange(b, dtype=torch.long, device=dev)
        self._span = torch.arange(self.max_blocks * block_size, device=dev)
        self.runs: dict[int, Callable[[], torch.Tensor]] = {}
        self.replays = 0  # steps served from a graph (for tests and the capacity report)

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def _forward(self, b: int) -> torch.Tensor:
        meta = AttentionMetadata(self.slots[:b], num_decodes=b, block_tables=self.tables[:b],
                                 context_lens=self.context_lens[:b])
        if not ops.use_triton(self.ids):  # the CPU attention path takes an additive mask
            mask = torch.zeros((b, self._span.numel()), dtype=self.dtype, device=self.device)
            mask.masked_fill_(self._span[None, :] >= self.context_lens[:b, None], float("-inf"))
            meta.decode_mask = mask[:, None, None, :]
        return self.model(self.ids[:b], self.positions[:b], self.kv_caches, meta, self.rows[:b])

    @torch.inference_mode()
    def capture(self) -> None:
        """Build every bucket's runner, largest first (the smaller ones reuse its memory pool)."""
        if self.replay_mode == "eager":
            for b in self.buckets:
                self.runs[b] = lambda b=b: self._forward(b)
            return
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        for b in reversed(self.buckets):
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: Triton compiles, cuBLAS picks its kernels
                for _ in range(2):
                    self._forward(b)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._forward(b)
            self.runs[b] = lambda g=graph, o=out: (g.replay(), o)[1]
        torch.cuda.synchronize()

    def fits(self, n: int) -> bool:
        return 0 < n <= self.max_batch

    @torch.inference_mode()
    def run(self, ids: list[int], positions: list[int], slots: list[int],
            tables: list[list[int]], context_lens: list[int]) -> torch.Tensor:
        """Logits ``[n, vocab]`` for ``n`` single-token decodes. The tensor belongs to the
        graph: the next replay overwrites it, so sample from it before the next step."""
        n = len(ids)
        b = next(x for x in self.buckets if x >= n)
        width = self.max_blocks
        padded = [t + [self.scratch_block] * (width - len(t)) for t in tables]
        pad = b - n
        scratch_slot = self.scratch_block * self.block_size
        # one host-to-device copy per buffer; padding rows reset to the scratch block
        self.ids[:b].copy_(torch.tensor(ids + [0] * pad), non_blocking=True)
        self.positions[:b].copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        self.slots[:b].copy_(torch.tensor(slots + [scratch_slot] * pad), non_blocking=True)
        self.context_lens[:b].copy_(torch.tensor(context_lens + [1] * pad, dtype=torch.int32),
                                    non_blocking=True)
        self.tables[:b].copy_(torch.tensor(padded + [[self.scratch_block] * width] * pad, dtype=torch.int32),
                              non_blocking=True)
        out = self.runs[b]()
        self.replays += 1
        return out[:n]
