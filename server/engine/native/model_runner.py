"""The one place where Python lists become tensors: batch -> model inputs -> sampled tokens.

KV cache: per layer one tensor ``[2, num_blocks, block_size, num_kv_heads, head_dim]``,
K then V (each half has the layout of ``kernels/reference.py``), so that CPU decode gathers
a sequence's K and V blocks in one indexing op.
"""

from __future__ import annotations

import torch

from .attention import AttentionMetadata, PrefillChunk
from .graphs import DecodeGraphs
from .loader import LoadedModel
from .sampler import SampleResult, SamplingRow, sample
from .scheduler import ScheduledBatch
from .sequence import Sequence


def kv_bytes_per_block(loaded: LoadedModel, block_size: int) -> int:
    c = loaded.config
    elem = torch.empty((), dtype=loaded.dtype).element_size()
    return 2 * c.num_layers * block_size * c.num_kv_heads * c.head_dim * elem


class ModelRunner:
    def __init__(self, loaded: LoadedModel, num_blocks: int, block_size: int,
                 device: torch.device | str = "cpu", scratch_block: bool = False):
        """``scratch_block``: allocate one block past ``num_blocks`` that the block manager
        never hands out, for the padding rows of decode graphs."""
        self.model = loaded.model
        self.device = torch.device(device)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.dtype = loaded.dtype
        c = loaded.config
        shape = (2, num_blocks + int(scratch_block), block_size, c.num_kv_heads, c.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=loaded.dtype, device=self.device)
                          for _ in range(c.num_layers)]
        self.graphs: DecodeGraphs | None = None

    def enable_decode_graphs(self, max_num_seqs: int, max_model_len: int, replay: str = "cuda") -> None:
        """Capture decode steps (see ``graphs.py``); needs ``scratch_block=True``."""
        if self.kv_caches[0].shape[1] != self.num_blocks + 1:
            raise ValueError("decode graphs need the runner built with scratch_block=True")
        self.graphs = DecodeGraphs(self.model, self.kv_caches, self.block_size, max_num_seqs, max_model_len,
                                   scratch_block=self.num_blocks, dtype=self.dtype, replay=replay)
        self.graphs.capture()

    def _graph_step(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[Sequence]] | None:
        """Logits from a decode graph when every seq decodes one token; None otherwise."""
        g = self.graphs
        if g is None or not g.fits(len(batch.seqs)) or any(n != 1 for n in batch.num_new_tokens):
            return None
        bs = self.block_size
        ids, positions, slots, tables, lens, rows, sampled = [], [], [], [], [], [], []
        for i, seq in enumerate(batch.seqs):
            p = seq.num_computed_tokens
            ids.append(seq.token_ids[p])
            positions.append(p)
            slots.append(seq.block_table[p // bs] * bs + p % bs)
            tables.append(seq.block_table[:p // bs + 1])
            lens.append(p + 1)
            if p + 1 == seq.num_tokens:
                rows.append(i)
                sampled.append(seq)
        logits = g.run(ids, positions, slots, tables, lens)
        if len(rows) != len(batch.seqs):
            logits = logits[self._tensor(rows)]
        return logits, sampled

    def _tensor(self, data, dtype=torch.long) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype, device=self.device)

    def prepare(self, batch: ScheduledBatch):
        """Flatten the batch into (input_ids, positions, metadata, logits rows, sampled seqs)."""
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_rows: list[int] = []
        sampled: list[Sequence] = []
        decode_tables, decode_lens, prefills = [], [], []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            q_start = len(ids)
            ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            if n == 1:
                decode_tables.append(table[:-(-end // bs)])
                decode_lens.append(end)
            else:
                prefills.append(PrefillChunk(q_start, n, end, self._tensor(table[:-(-end // bs)])))
            if end == seq.num_tokens:  # the chunk reaches the end: sample the next token
                logits_rows.append(len(ids) - 1)
                sampled.append(seq)
        meta = AttentionMetadata(self._tensor(slots), num_decodes=len(decode_lens), prefills=prefills)
        if decode_lens:
            width = max(len(t) for t in decode_tables)
            meta.block_tables = self._tensor([t + [0] * (width - len(t)) for t in decode_tables])
            meta.context_lens = self._tensor(decode_lens)
            span = torch.arange(width * bs, device=self.device)
            # additive float mask, built once per step (a bool mask is converted in every layer)
            mask = torch.zeros((len(decode_lens), width * bs), dtype=self.dtype, device=self.device)
            mask.masked_fill_(span[None, :] >= meta.context_lens[:, None], float("-inf"))
            meta.decode_mask = mask[:, None, None, :]
        return self._tensor(ids), self._tensor(positions), meta, self._tensor(logits_rows), sampled

    @torch.inference_mode()
    def forward_logits(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[Sequence]]:
        graphed = self._graph_step(batch)
        if graphed is not None:
            return graphed
        ids, positions, meta, rows, sampled = self.prepare(batch)
        if not sampled:
            rows = rows[:0]
        logits = self.model(ids, positions, self.kv_caches, meta, rows)
        return logits, sampled

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, rows_of: dict[int, SamplingRow]) -> dict[int, SampleResult]:
        """Run one step; returns the sampled token for each seq (keyed by id(seq)) that got one."""
        logits, sampled = self.forward_logits(batch)
        if not sampled:
            return {}
        results = sample(logits, [rows_of[id(s)] for s in sampled])
        return {id(s): r for s, r in zip(sampled, results)}
