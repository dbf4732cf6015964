"""The capacity document (schema version 2) of a multi-model node.

Version-1 fields keep their meaning for the node as a whole: ``load`` sums the loaded
models' engines (they share the box), ``performance`` is the most recently used model's
window, and the prediction is the worst of the loaded models' (a conservative node-wide
figure; the router adds a model's load or wake time itself from ``models[]``).
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

from server import __version__
from server.capacity.accelerators import AcceleratorProbe
from server.capacity.metrics import ModelLoad, NodeMetrics
from server.capacity.perf import predict_ttft
from server.capacity.schema import (
    Capacity,
    EngineLoad,
    Identity,
    ModelEntry,
    Performance,
    Prediction,
    PriorityQueue,
)

if TYPE_CHECKING:
    from server.host import ModelHost
    from server.host_slots import ModelSlot


class _Ident:
    __slots__ = ("name", "node_id", "probe")

    def __init__(self, host: ModelHost):
        from server.runtime import stable_node_id

        self.node_id = stable_node_id(host.settings)
        self.name = host.settings.name or socket.gethostname()
        self.probe = AcceleratorProbe()


def ident(host: ModelHost) -> _Ident:
    if host._identity is None:
        host._identity = _Ident(host)
    return host._identity


def model_entry(slot: ModelSlot) -> ModelEntry:
    spec, rt = slot.spec, slot.runtime
    running = waiting = 0
    if rt is not None and slot.state == "loaded":
        info = rt.engine.info
        stats = rt.engine.stats()
        running, waiting = stats.num_running, stats.num_waiting
        base = dict(id=spec.name, root=info.root, max_model_len=info.max_model_len, dtype=info.dtype,
                    quantization=info.quantization, weight_bytes=info.weight_bytes,
                    quantization_reason=info.note, random_weights=info.random_weights)
    else:
        s = spec.settings
        base = dict(id=spec.name, root=str(s.model or spec.name), max_model_len=spec.max_model_len or 0,
                    dtype=s.dtype, quantization=s.quantization)
    return ModelEntry(**base, state=slot.state, state_reason=slot.reason, pinned=spec.pinned,
                      keep_alive_s=slot.keep_alive_s, memory_bytes=slot.memory_bytes,
                      last_used=slot.last_used_unix, load_s=slot.load_s, wake_s=slot.wake_s,
                      running=running, waiting=waiting + slot.waiters)  # waiting for its load too


def model_load(slot: ModelSlot) -> ModelLoad:
    """A model's engine gauges for /metrics: its engine's figures while loaded (waiting counts
    the requests waiting for its load or wake, as in its ``models[]`` entry), else zeros."""
    if slot.state == "loaded" and slot.runtime is not None:
        st = slot.runtime.engine.stats()
        return ModelLoad(slot.spec.name, st.num_running, st.num_waiting + slot.waiters, st.kv_cache_usage)
    return ModelLoad(slot.spec.name, 0, slot.waiters, 0.0)


class HostMetrics:
    """``/metrics`` of a model host: one registry for the node; each model's runtime records
    into it through a view labelled with the model's name (:meth:`NodeMetrics.for_model`),
    and :meth:`render` is the single-model node's render with one gauge set per model."""

    def __init__(self, host: ModelHost):
        self._host = host
        self.root = NodeMetrics("")  # node-wide series need no model; per-model ones go through views

    def for_model(self, name: str) -> NodeMetrics:
        return self.root.for_model(name)

    def render(self, cap: Capacity, in_flight: int) -> bytes:
        return self.root.render(cap, in_flight, [model_load(sl) for sl in self._host.slots.values()])


def _queue_by_priority(stats: list, slots: list[ModelSlot]) -> list[PriorityQueue]:
    """The loaded engines' waiting work per priority class, summed (they share the box), and
    the requests waiting for a model's load or wake in their class (their prompts are not
    tokenized yet: they add requests, not prompt tokens)."""
    classes: dict[int, list[int]] = {}
    for st in stats:
        for p, (n, t) in st.waiting_by_priority.items():
            c = classes.setdefault(p, [0, 0])
            c[0] += n
            c[1] += t
    for sl in slots:
        for p, n in sl.waiters_by_priority.items():
            classes.setdefault(p, [0, 0])[0] += n
    return [PriorityQueue(priority=p, waiting=n, waiting_prompt_tokens=t) for p, (n, t) in sorted(classes.items())]


def _load_waiters_ahead(slots: list[ModelSlot], priority: int) -> int:
    """Requests waiting for a load that will run no later than a request of ``priority``."""
    return sum(n for sl in slots for p, n in sl.waiters_by_priority.items() if p <= priority)


def host_capacity(host: ModelHost, prompt_tokens: int | None, max_tokens: int | None,
                  priority: int = 0) -> Capacity:
    s = host.settings
    idn = ident(host)
    loaded = [sl for sl in host.slots.values() if sl.state == "loaded" and sl.runtime is not None]
    stats = [sl.runtime.engine.stats() for sl in loaded]
    in_flight = sum(sl.runtime._in_flight_sequences() for sl in loaded)
    queued = sum(sl.runtime.queued() for sl in loaded)
    total_tokens = sum(st.kv_total_tokens for st in stats)
    used_tokens = sum(st.kv_total_tokens - st.kv_free_tokens for st in stats)
    load_waiters = sum(sl.waiters for sl in host.slots.values())  # requests waiting for a load queue too
    load = EngineLoad(running=sum(st.num_running for st in stats),
                      waiting=sum(st.num_waiting for st in stats) + load_waiters,
                      waiting_prompt_tokens=sum(st.waiting_prompt_tokens for st in stats),
                      kv_cache_usage=min(1.0, used_tokens / total_tokens) if total_tokens else 0.0,
                      kv_free_tokens=sum(st.kv_free_tokens for st in stats), kv_total_tokens=total_tokens,
                      max_concurrent_sequences=max([st.max_num_seqs or s.max_num_seqs for st in stats]
                                                   or [s.max_num_seqs]),
                      queue_by_priority=_queue_by_priority(stats, list(host.slots.values())))
    recent = max(loaded, key=lambda sl: sl.last_used, default=None)
    summary = recent.runtime.perf.summary() if recent is not None else {"window_s": 60.0, "requests": 0}
    cap = Capacity(
        timestamp=time.time(),
        identity=Identity(node_id=idn.node_id, name=idn.name, zone=s.zone, labels=dict(s.labels),
                          version=__version__, engine=s.engine, simulated=s.engine == "sim"),
        state=host.state if host.state != "starting" else "starting",
        models=[model_entry(sl) for sl in host.slots.values()],
        accelerators=idn.probe.read(), cpu_only=idn.probe.cpu_only, load=load,
        performance=Performance(**{k: v for k, v in summary.items() if k != "mean_e2e_s"}),
        idle=in_flight == 0 and load.running == 0 and load.waiting == 0,
        admission={"in_flight": in_flight, "queued": queued, "waiting_for_load": load_waiters,
                   "max_queued_requests": s.max_queued_requests, "max_queue_wait_s": s.max_queue_wait},
        memory_budget_bytes=host.budget_bytes,
    )
    if prompt_tokens is not None:
        # Requests waiting for a load join the box's queue when it ends: they count as
        # sequences ahead of this one (those of its priority or a more urgent one).
        ahead = _load_waiters_ahead(list(host.slots.values()), priority)
        preds = [sl.runtime.predict(prompt_tokens, priority, extra_ahead=ahead) for sl in loaded]
        pred = max(preds, key=lambda p: p.predicted_ttft_s, default=None) or predict_ttft(
            prompt_tokens=prompt_tokens, waiting_prompt_tokens=0, in_flight=ahead, max_num_seqs=s.max_num_seqs,
            summary=summary)
        admit = host.state == "ready"
        reason = "ok" if admit else f"node is {host.state}"
        cap.prediction = Prediction(prompt_tokens=prompt_tokens, max_tokens=max_tokens or 0,
                                    predicted_ttft_ms=pred.predicted_ttft_s * 1000,
                                    predicted_queue_wait_ms=pred.queue_wait_s * 1000, would_admit=admit,
                                    reason=f"{reason} ({pred.basis}; a model not loaded adds its load_s/wake_s)")
    return cap
