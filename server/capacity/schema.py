"""The capacity document: what a node tells routers and agents about itself.

Versioned (``schema_version``); routers poll it every second, so building it must be cheap.
Additive changes keep the version; removing or renaming a field bumps it.

Version 2 (multi-model nodes, issue 14) is a superset of version 1: every version-1 field
keeps its name, type and meaning, so a version-1 reader (which ignores unknown fields) still
works. It adds, per ``models[]`` entry, ``state`` (``loaded``, ``loading``, ``sleeping``,
``unloaded``, ``failed``) with ``state_reason``, ``pinned``, ``keep_alive_s``,
``memory_bytes``, ``last_used``, measured ``load_s``/``wake_s`` and per-model ``running``/
``waiting``; and ``memory_budget_bytes`` on the document. A single-model node reports its one
model as ``loaded``. ``models[]`` lists every model a node can serve, loaded or not; a version-1
reader therefore sees cold models as served (it will still be answered: the node loads them).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = 2

NodeState = Literal["starting", "ready", "draining", "sleeping"]
ModelStateName = Literal["loaded", "loading", "sleeping", "unloaded", "failed"]


class Identity(BaseModel):
    node_id: str = Field(description="Stable across restarts (kept in the node's state directory).")
    name: str
    zone: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    version: str
    engine: str = Field(description="vllm | native | sim")
    simulated: bool = Field(False, description="True for --engine sim: latencies are modelled, text is placeholder.")


class ModelEntry(BaseModel):
    id: str
    root: str
    max_model_len: int
    dtype: str
    quantization: str | None = None
    quantization_reason: str | None = None
    weight_bytes: int | None = None
    random_weights: bool = Field(False, description="Demo/test model: its text is noise.")
    source: str | None = Field(None, description="Where the served weights came from when not a plain "
                               "model directory, e.g. 'gguf:SmolLM2-135M-Instruct.Q4_1.gguf'.")
    converted: bool | None = Field(None, description="True when the engine serves a directory converted "
                                   "from `source` (vLLM reads no GGUF).")
    # version 2
    state: ModelStateName = Field("loaded", description="Whether a request would wait for a load or a wake.")
    state_reason: str | None = Field(None, description="Why the model is failed, unloaded or asleep.")
    pinned: bool = False
    keep_alive_s: float | None = Field(None, description="Idle seconds before release; null = never.")
    memory_bytes: int | None = Field(None, description="Its share of the memory budget (estimated until loaded).")
    last_used: float | None = Field(None, description="Unix time of the last request.")
    load_s: float | None = Field(None, description="Measured time of the last cold load.")
    wake_s: float | None = Field(None, description="Measured time of the last wake from sleep.")
    running: int = 0
    waiting: int = 0


class Accelerator(BaseModel):
    index: int
    kind: Literal["gpu", "cpu"]
    name: str
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    unified_memory: bool = Field(False, description="Memory figures are system memory (e.g. GB10 reports N/A).")
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None


class PriorityQueue(BaseModel):
    priority: int = Field(description="Scheduling priority class; lower runs first.")
    waiting: int = Field(description="Sequences of this class waiting to be scheduled.")
    waiting_prompt_tokens: int = Field(description="Prompt tokens of this class still to prefill.")


class EngineLoad(BaseModel):
    running: int
    waiting: int
    waiting_prompt_tokens: int
    kv_cache_usage: float = Field(ge=0.0, le=1.0)
    kv_free_tokens: int
    kv_total_tokens: int
    max_concurrent_sequences: int
    queue_by_priority: list[PriorityQueue] = Field(
        default_factory=list, description="The waiting queue per priority class, ascending; empty when idle.")


class CacheInfo(BaseModel):
    block_size: int = Field(description="KV block size in tokens: the unit of prefix caching.")
    prefix_caching: bool
    kv_events: bool = Field(False, description="GET /v1/kv/events serves BlockStored/BlockRemoved events.")


class Performance(BaseModel):
    window_s: float
    requests: int
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    tpot_p50_ms: float | None = None
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None


class Prediction(BaseModel):
    prompt_tokens: int
    max_tokens: int
    predicted_ttft_ms: float
    predicted_queue_wait_ms: float
    would_admit: bool
    reason: str


class Capacity(BaseModel):
    schema_version: int = SCHEMA_VERSION
    timestamp: float = Field(description="Unix time the document was built.")
    identity: Identity
    state: NodeState
    models: list[ModelEntry]
    accelerators: list[Accelerator]
    cpu_only: bool
    load: EngineLoad
    performance: Performance
    idle: bool = Field(description="Nothing running or waiting.")
    admission: dict[str, float | int | None] = Field(default_factory=dict)
    prediction: Prediction | None = None
    cache: CacheInfo | None = Field(None, description="The engine's prefix cache, where it says.")
    memory_budget_bytes: int | None = Field(None, description="Multi-model nodes: memory the models may hold.")
