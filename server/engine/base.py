"""The Engine protocol: the one boundary between the HTTP layer and a model runtime.

Every engine (vLLM, native, sim) implements :class:`Engine`. The API layer speaks only in
the records defined here; it never imports torch or vLLM. Records are plain dataclasses so
the scheduler-side code and its tests stay free of pydantic and torch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from server.sampling import SamplingOptions  # noqa: F401  (part of the engine's vocabulary)

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(slots=True, frozen=True)
class ModelInfo:
    id: str  # the name clients use in "model"
    root: str  # where the weights came from (local path or hub id)
    max_model_len: int
    dtype: str  # "bfloat16", "float16", "float32"
    quantization: str | None = None  # None, "fp8", "awq", "gptq", "int8", "int4", ...
    weight_bytes: int | None = None
    random_weights: bool = False  # the demo model: its text is noise
    note: str | None = None  # free-form, e.g. why a quantization was picked
    source: str | None = None  # where a derived model came from, e.g. "gguf:file.gguf"
    converted: bool = False  # served from a directory converted from ``source``


@dataclass(slots=True)
class GenerateRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    arrival_time: float = 0.0  # time.monotonic() when the HTTP request arrived
    priority: int = 0  # vLLM's convention: lower runs first; PRIORITY_MIN..PRIORITY_MAX


PRIORITY_MIN, PRIORITY_MAX = -100, 100


@dataclass(slots=True, frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(slots=True, frozen=True)
class PositionLogprobs:
    """Logprob of the sampled token at one position, plus the top alternatives."""

    sampled: TokenLogprob
    top: list[TokenLogprob]


@dataclass(slots=True)
class Delta:
    """What one engine step produced for one request."""

    token_ids: list[int]
    text: str
    logprobs: list[PositionLogprobs] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None  # the stop string or token that ended it
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative, including this delta
    cached_tokens: int = 0


@dataclass(slots=True)
class EngineStats:
    """Engine load, at most one engine step old. Cheap to read: no engine round trip."""

    num_running: int = 0
    num_waiting: int = 0
    waiting_prompt_tokens: int = 0
    kv_cache_usage: float = 0.0  # 0..1
    kv_total_tokens: int = 0
    max_num_seqs: int = 0
    max_num_batched_tokens: int = 0
    steps: int = 0
    # Waiting work per priority class: priority -> (sequences, prompt tokens still to prefill).
    waiting_by_priority: dict[int, tuple[int, int]] = field(default_factory=dict)
    block_size: int = 0  # KV block size in tokens (0: unknown)
    num_gpu_blocks: int = 0  # KV blocks in the pool (0: unknown)
    prefix_caching: bool = False

    def waiting_at_or_before(self, priority: int) -> tuple[int, int]:
        """(sequences, prompt tokens) waiting that would run no later than a request of ``priority``.

        Without a per-class breakdown every waiting sequence counts (the FCFS answer)."""
        if not self.waiting_by_priority:
            return self.num_waiting, self.waiting_prompt_tokens
        seqs = sum(n for p, (n, _) in self.waiting_by_priority.items() if p <= priority)
        toks = sum(t for p, (_, t) in self.waiting_by_priority.items() if p <= priority)
        return seqs, toks

    @property
    def kv_free_tokens(self) -> int:
        return max(0, round(self.kv_total_tokens * (1.0 - self.kv_cache_usage)))


class EngineError(Exception):
    """A failure inside the engine for one request (it gets a 5xx; others go on)."""


class EngineDeadError(EngineError):
    """The engine as a whole is gone; the node must report unhealthy and exit."""


class InvalidRequestForEngine(ValueError):
    """A request the engine cannot serve (unsupported feature, bad schema): a 400."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request_error"):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text
    id: str = ""


@runtime_checkable
class ToolCallParser(Protocol):
    """May also have ``start_marker`` (str): text that opens a call, held back while streaming."""

    def extract(self, text: str, tools: list[dict[str, Any]] | None = None) -> tuple[str | None, list[ToolCall]]:
        """Split model output into (content, tool calls); ``tools`` are the request's."""
        ...


ProgressFn = Callable[[str], None]


@runtime_checkable
class Engine(Protocol):
    name: str  # "vllm", "native", "sim"

    @property
    def info(self) -> ModelInfo: ...

    async def start(self, progress: ProgressFn | None = None) -> None: ...

    async def stop(self) -> None: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        """Stream deltas, one per engine step, ending with one whose finish_reason is set.

        Raises InvalidRequestForEngine before the first delta for unsupported input,
        EngineError for a failure of this request, EngineDeadError when the engine is gone.
        Cancelling the iterator (client gone) must abort the request.
        """
        ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    def is_healthy(self) -> bool: ...

    # Text processing lives with the engine: it owns the tokenizer and chat template.
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    add_generation_prompt: bool = True) -> list[int]:
        """Apply the model's chat template (never a client's) and tokenize."""
        ...

    def detokenize(self, token_ids: list[int]) -> str: ...

    def tool_parser(self, name: str) -> ToolCallParser: ...
