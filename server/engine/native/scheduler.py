"""Which tokens run in the next step (no torch).

Each step has a token budget (``max_num_batched_tokens``) and a sequence cap
(``max_num_seqs``). Running sequences go first, decodes before unfinished prefills, so a
long prompt never stalls the streams already flowing; waiting sequences fill what is left,
their prompts cut into chunks when chunked prefill is on. When the KV cache cannot hold the
next token of a running sequence, a running sequence is preempted by recompute: its blocks
are freed and it goes back to the queue (its prefix blocks usually survive in the prefix
cache, so the recompute is cheap).

Priority (vLLM's convention, lower runs first): waiting sequences are admitted in
(priority, arrival) order, and the best one that does not fit stops admission for the step,
so nothing overtakes it. The preemption victim is the running sequence with the largest
(priority, arrival): the lowest class, newest first; with equal priorities that is the
newest sequence, the FCFS behaviour. A preempted sequence keeps its priority and arrival,
so it is re-admitted ahead of later arrivals of its class. Preemption is only ever for KV
room of sequences already running: a waiting high-priority request does not evict running
ones, it waits for the next free slot or blocks (as in vLLM's priority scheduler).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True


@dataclass(slots=True)
class ScheduledBatch:
    """One step's work: seqs[i] runs num_new_tokens[i] tokens from its num_computed_tokens.

    Single-token items (decodes) come first, which the model runner relies on.
    """

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.bm = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._arrivals = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        if seq.order < 0:
            seq.order = self._arrivals
            self._arrivals += 1
        self.waiting.append(seq)

    @staticmethod
    def _key(seq: Sequence) -> tuple[int, int]:
        return (seq.priority, seq.order)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(batch, budget)
        if not batch.preempted:  # a full cache admits nobody new this step
            self._schedule_waiting(batch, budget)
        order = sorted(range(len(batch.seqs)), key=lambda i: batch.num_new_tokens[i] != 1)
        batch.seqs = [batch.seqs[i] for i in order]
        batch.num_new_tokens = [batch.num_new_tokens[i] for i in order]
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        # Decodes first, then prefills still in progress; within each, higher priority first
        # (stable otherwise: oldest first).
        queue = sorted(self.running, key=lambda s: (s.num_tokens - s.num_computed_tokens > 1, s.priority))
        scheduled: set[int] = set()
        while queue and budget > 0:
            seq = queue.pop(0)
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if num_new <= 0:
                continue
            while not self.bm.grow(seq, seq.num_computed_tokens + num_new):
                victim = self._pick_victim(scheduled, seq)
                if victim is None:
                    break
                if victim in queue:
                    queue.remove(victim)
                self._preempt(victim)
                batch.preempted.append(victim)
            else:
                batch.seqs.append(seq)
                batch.num_new_tokens.append(num_new)
                scheduled.add(id(seq))
                budget -= num_new
                continue
            # Nothing left to evict but seq itself.
            self._preempt(seq)
            batch.preempted.append(seq)
        return budget

    def _pick_victim(self, scheduled: set[int], current: Sequence) -> Sequence | None:
        """The lowest-priority, newest running sequence not yet given work this step."""
        candidates = [s for s in self.running if s is not current and id(s) not in scheduled]
        return max(candidates, key=self._key) if candidates else None

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.free_seq(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        if len(self.waiting) > 1:  # (priority, arrival) order; stable, and cheap for short queues
            self.waiting = deque(sorted(self.waiting, key=self._key))
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            hits = self.bm.prefix_hits(seq) if not seq.block_table else []
            num_cached = len(hits) * self.bm.block_size
            remaining = seq.num_tokens - num_cached
            num_new = min(remaining, budget)
            if num_new < remaining and not self.config.enable_chunked_prefill:
                break
            if not self.bm.can_allocate(seq, hits, num_cached + num_new):
                break
            self.waiting.popleft()
            if not seq.block_table:
                self.bm.claim_prefix(seq, hits)
            if not self.bm.grow(seq, seq.num_computed_tokens + num_new):
                raise RuntimeError("block manager refused an allocation it allowed")
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new

    def advance(self, batch: ScheduledBatch) -> list[bool]:
        """Account the step just run; returns, per item, whether it produced a token."""
        out = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new
            self.bm.cache_full_blocks(seq)
            out.append(seq.num_computed_tokens == seq.num_tokens)
        return out

    def finish(self, seq: Sequence) -> None:
        """Remove seq wherever it is and free its KV (idempotent)."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.bm.free_seq(seq)
        seq.status = SequenceStatus.FINISHED
