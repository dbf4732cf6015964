"""Engine-neutral sampling parameters: the record the HTTP schemas produce and every engine
consumes. It sits below both (no imports) so that the router, which validates requests with
the node's schemas, never imports the engine package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class SamplingOptions:
    """Engine-neutral sampling parameters, already validated by the API layer."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; k >= 0: sampled token plus k alternatives
    logit_bias: dict[int, float] | None = None
    # Structured output: at most one of these is set.
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
