"""The model host's records: one ModelSpec per configured model, one ModelSlot of live state
per model, and the errors the host raises (the HTTP edge maps them to envelopes)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from server.config import NodeSettings

MODEL_DEFAULT: Any = object()  # a request that names no keep_alive: the model's own applies
ModelState = Literal["loaded", "loading", "sleeping", "unloaded", "failed"]
HOLDS_MEMORY = ("loaded", "loading")


class UnknownModel(LookupError):
    pass


class ModelUnavailable(RuntimeError):
    """The model exists but cannot serve now (failed load, no room, draining, load timeout)."""

    def __init__(self, message: str, *, code: str, retry_after: float | None = None, status: int = 503):
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after
        self.status = status


@dataclass(slots=True)
class ModelSpec:
    name: str  # the id clients send
    settings: NodeSettings  # this model's settings (model path, engine, dtype, ...)
    keep_alive_s: float | None = 300.0
    pinned: bool = False
    memory_bytes: int = 0  # estimated share of the budget, before any load
    max_model_len: int | None = None  # known without loading (config.json), for /v1/models
    source: str = ""  # where the entry came from: --model, --models-dir, config


@dataclass(slots=True)
class ModelSlot:
    spec: ModelSpec
    state: ModelState = "unloaded"
    runtime: Any = None  # NodeRuntime while loaded or sleeping
    task: asyncio.Task | None = None
    reason: str | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_used: float = 0.0  # monotonic
    last_used_unix: float | None = None
    load_s: float | None = None
    wake_s: float | None = None
    loads: int = 0
    waiters: int = 0  # requests waiting for its load or wake
    waiters_by_priority: dict[int, int] = field(default_factory=dict)  # the same, per priority class
    holds: int = 0  # requests given the runtime and not yet admitted (tokenizing off the loop)
    measured_bytes: int | None = None
    timer: asyncio.TimerHandle | None = None
    # Ollama's per-request keep_alive: the last request's value governs its model from then on;
    # a request without one goes back to the model's own (spec.keep_alive_s).
    request_keep_alive: float | None = None  # None = never
    has_request_keep_alive: bool = False

    @property
    def keep_alive_s(self) -> float | None:
        """Idle seconds before release now (None = never)."""
        return self.request_keep_alive if self.has_request_keep_alive else self.spec.keep_alive_s

    def set_request_keep_alive(self, seconds: float | None) -> None:
        """Ollama: each request's keep_alive (or, without one, the model's own) governs from now."""
        self.has_request_keep_alive = seconds is not MODEL_DEFAULT
        self.request_keep_alive = None if seconds is MODEL_DEFAULT else seconds

    def add_waiter(self, priority: int) -> None:
        self.waiters += 1
        self.waiters_by_priority[priority] = self.waiters_by_priority.get(priority, 0) + 1

    def drop_waiter(self, priority: int) -> None:
        self.waiters -= 1
        left = self.waiters_by_priority.get(priority, 0) - 1
        if left > 0:
            self.waiters_by_priority[priority] = left
        else:
            self.waiters_by_priority.pop(priority, None)

    @property
    def busy(self) -> bool:
        return (self.waiters > 0 or self.holds > 0 or self.state == "loading"
                or bool(self.runtime is not None and self.runtime.active))

    @property
    def memory_bytes(self) -> int:
        return self.measured_bytes or self.spec.memory_bytes
