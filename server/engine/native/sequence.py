"""One request's token state, as the scheduler and block manager see it (no torch).

Invariant: ``num_computed_tokens <= num_tokens``. Tokens in ``[0, num_computed_tokens)``
have their KV in the blocks of ``block_table``; the rest still need a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: str
    token_ids: list[int]
    max_tokens: int
    priority: int = 0  # lower runs first (vLLM's convention)
    order: int = -1  # arrival order, set by the scheduler on add; kept across preemption
    num_prompt_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache on first schedule
    block_table: list[int] = field(default_factory=list)
    prefix_hashes: list[int] = field(default_factory=list)  # memo of full-block hashes for lookups
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        self.token_ids = list(self.token_ids)
        if not self.num_prompt_tokens:
            self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
