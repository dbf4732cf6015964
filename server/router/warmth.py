"""Warm versus cold: what a model's state on a node adds to the predicted time to first token.

A node's capacity document (schema version 2) lists every model it can serve with its
``state``. A request for a model that is not loaded there waits for the load (or the wake)
before its queue wait and prefill, so the router adds ``load_penalty_ms``:

- ``loaded``: 0;
- ``sleeping``: the measured ``wake_s``, else half the measured ``load_s`` (the issue's goal
  for a wake), else half the prior;
- ``unloaded`` / ``loading``: the measured ``load_s``, else a prior of
  ``COLD_BASE_MS + memory_bytes / COLD_BYTES_PER_MS`` (weights read at ~1 GiB/s plus start
  overhead; a node reports its own figure after its first load);
- ``failed``: a large constant, so such a node is only ever a last resort.

A version-1 node (no ``state``) reads as ``loaded``: it always was.

:func:`prefer_warm` then enforces the hard rule: a cold start is never chosen while a warm
node with a free sequence slot exists, whatever the estimates say (a slightly lower RTT must
not buy a load).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.capacity.schema import ModelEntry
    from server.router.policy import Estimate
    from server.router.registry import Node

COLD_BASE_MS = 2000.0
COLD_BYTES_PER_MS = float(1 << 30) / 1000.0  # 1 GiB/s
FAILED_PENALTY_MS = 600_000.0


def model_entry(node: Node, model: str) -> ModelEntry | None:
    cap = node.capacity
    if cap is None:
        return None
    for m in cap.models:
        if m.id == model:
            return m
    return None


def cold_prior_ms(entry: ModelEntry) -> float:
    return COLD_BASE_MS + (entry.memory_bytes or entry.weight_bytes or 0) / COLD_BYTES_PER_MS


def load_penalty_ms(node: Node, model: str | None) -> float:
    if model is None:
        return 0.0
    entry = model_entry(node, model)
    if entry is None or entry.state == "loaded":
        return 0.0
    if entry.state == "failed":
        return FAILED_PENALTY_MS
    load_ms = entry.load_s * 1000.0 if entry.load_s is not None else cold_prior_ms(entry)
    if entry.state == "sleeping":
        return entry.wake_s * 1000.0 if entry.wake_s is not None else load_ms / 2.0
    return load_ms


def is_warm(node: Node, model: str) -> bool:
    entry = model_entry(node, model)
    return entry is not None and entry.state == "loaded"


def has_free_slot(node: Node) -> bool:
    cap = node.capacity
    if cap is None:
        return False
    busy = cap.load.running + cap.load.waiting + node.pending
    return busy < max(1, cap.load.max_concurrent_sequences)


def prefer_warm(ranked: list[Estimate], model: str) -> list[Estimate]:
    """Warm nodes before cold ones when some warm node has a free slot (order kept within each)."""
    warm = [e for e in ranked if is_warm(e.node, model)]
    if len(warm) == len(ranked) or not any(has_free_slot(e.node) for e in warm):
        return ranked
    return warm + [e for e in ranked if not is_warm(e.node, model)]


def model_states(node: Node) -> dict[str, str]:
    cap = node.capacity
    return {} if cap is None else {m.id: m.state for m in cap.models}
