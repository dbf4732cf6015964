"""The node's runtime state: lifecycle, admission, request accounting and the capacity report.

The API layer asks it to admit a request, then reports timings back; routers read the result
through ``capacity()``. Nothing here blocks on the engine: ``engine.stats()`` is a copy of
the last engine step.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from server import __version__
from server.capacity.accelerators import AcceleratorProbe
from server.capacity.metrics import NodeMetrics
from server.capacity.perf import PerfWindow, RequestTiming, predict_ttft
from server.capacity.perf import Prediction as TtftPrediction
from server.capacity.schema import (
    CacheInfo,
    Capacity,
    EngineLoad,
    Identity,
    ModelEntry,
    NodeState,
    Performance,
    Prediction,
    PriorityQueue,
)
from server.config import NodeSettings, state_dir
from server.edge.errors import NotReady, Overloaded
from server.engine.base import Engine

log = logging.getLogger("edgefleet.node")


def stable_node_id(settings: NodeSettings) -> str:
    """A node id kept in the state directory, so it survives restarts. Keyed by port, so
    several nodes on one machine sharing the default state directory stay distinct."""
    path = state_dir(settings) / ("node_id" if settings.port == 8000 else f"node_id.{settings.port}")
    try:
        text = path.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    node_id = uuid.uuid4().hex[:16]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(node_id + "\n")
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot persist node id in %s (%s); it will change on restart", path, exc)
    return node_id


@dataclass(slots=True, frozen=True)
class Refusal:
    """Why a request would not be admitted now (:meth:`NodeRuntime.refusal`)."""

    code: Literal["not_ready", "engine_unavailable", "queue_full", "queue_wait"]
    reason: str  # for the capacity report's prediction
    queue_wait_s: float = 0.0


@dataclass(slots=True)
class ActiveRequest:
    engine_ids: list[str]
    prompt_tokens: int
    arrival: float
    first_token_at: float | None = None
    last_token_at: float | None = None
    completion_tokens: int = 0
    itls: list[float] = field(default_factory=list)
    queued: bool = False  # began behind a full batch (its TTFT includes a wait for a slot)


class NodeRuntime:
    def __init__(self, settings: NodeSettings, engine: Engine, quantization_reason: str | None = None):
        self.settings = settings
        self.engine = engine
        self.state: NodeState = "starting"
        self.node_id = stable_node_id(settings)
        self.name = settings.name or socket.gethostname()
        self.quantization_reason = quantization_reason
        self.probe = AcceleratorProbe()
        self.perf = PerfWindow()
        self.metrics: NodeMetrics | None = None
        self.active: dict[str, ActiveRequest] = {}
        self.start_error: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.on_idle: Callable[[], None] | None = None  # the model host's keep_alive hook

    # --- lifecycle ------------------------------------------------------------------
    async def start_engine(self) -> None:
        try:
            await self.engine.start(progress=lambda msg: log.info("%s", msg))
        except Exception as exc:
            self.start_error = f"{type(exc).__name__}: {exc}"
            log.exception("engine failed to start")
            raise
        self.metrics = NodeMetrics(self.engine.info.id)
        # The startup heap (torch, tokenizer, model config) never becomes garbage; freezing it
        # keeps full collections from stalling every stream in flight (vLLM's server does the same).
        gc.collect()
        gc.freeze()
        self.state = "ready"
        log.info("node %s (%s) ready: model %s on %s engine", self.name, self.node_id, self.engine.info.id,
                 self.engine.name)

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.engine_healthy()

    def engine_healthy(self) -> bool:
        return self.state == "starting" or self.engine.is_healthy()

    async def drain(self, timeout: float) -> int:
        """Stop admitting, wait for in-flight requests, abort what is left. Returns aborted count."""
        self.state = "draining"
        log.info("draining %d in-flight request(s), up to %.0f s", len(self.active), timeout)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return 0
        except TimeoutError:
            left = [rid for a in self.active.values() for rid in a.engine_ids]
            log.warning("shutdown timeout: ending %d request(s) with an error", len(left))
            for rid in left:
                await self.engine.abort(rid)
            return len(left)

    # --- admission ------------------------------------------------------------------
    def slots(self) -> int:
        """Sequences the engine runs at once: its own figure (an engine option may set it),
        else the node's ``--max-num-seqs``. Admission, the prediction and the capacity
        document all count with this one number."""
        return self.engine.stats().max_num_seqs or self.settings.max_num_seqs

    def queued(self) -> int:
        return max(0, self._in_flight_sequences() - self.slots())

    def _in_flight_sequences(self) -> int:
        return sum(len(a.engine_ids) for a in self.active.values())

    def refusal(self, prompt_tokens: int, n: int = 1, prediction: TtftPrediction | None = None,
                priority: int = 0) -> Refusal | None:
        """The one admission rule, used by :meth:`admit` and by the capacity report's
        ``would_admit``: None if ``n`` more sequences of ``prompt_tokens`` would be admitted
        now. The predicted queue wait (for a request of ``priority``) is checked only when the
        request would queue."""
        s = self.settings
        if self.state != "ready":
            return Refusal("not_ready", f"node is {self.state}")
        if not self.engine.is_healthy():
            return Refusal("engine_unavailable", "engine is not running")
        queued = max(0, self._in_flight_sequences() + n - self.slots())
        if queued > s.max_queued_requests:
            return Refusal("queue_full", "queue full")
        if s.max_queue_wait is not None and queued > 0:
            wait = (prediction or self.predict(prompt_tokens, priority)).queue_wait_s
            if wait > s.max_queue_wait:
                return Refusal("queue_wait", "predicted queue wait over max_queue_wait", wait)
        return None

    def admit(self, prompt_tokens: int, n: int = 1, priority: int = 0) -> None:
        refused = self.refusal(prompt_tokens, n, priority=priority)
        if refused is None:
            return
        if refused.code == "not_ready":
            raise NotReady(f"Node is {self.state}; not accepting requests.", headers={"Retry-After": "5"})
        if refused.code == "engine_unavailable":
            raise NotReady("Engine is not running.", code="engine_unavailable", headers={"Retry-After": "10"})
        self._reject(refused.code)
        retry = {"Retry-After": str(self._retry_after())}
        if refused.code == "queue_full":
            raise Overloaded(f"Queue is full ({self.settings.max_queued_requests} waiting); retry later.",
                             headers=retry)
        raise Overloaded(f"Predicted queue wait {refused.queue_wait_s:.1f} s exceeds "
                         f"{self.settings.max_queue_wait:.1f} s; retry later.", headers=retry)

    def _reject(self, reason: str) -> None:
        if self.metrics:
            self.metrics.rejected.labels(reason).inc()

    def _retry_after(self) -> int:
        mean = self.perf.summary().get("mean_e2e_s") or 1.0
        return max(1, math.ceil(float(mean)))

    def predict(self, prompt_tokens: int, priority: int = 0, extra_ahead: int = 0) -> TtftPrediction:
        """Predicted TTFT for a request of ``priority``: only waiting work that runs no later than
        it (priority <= its own) counts as ahead of it. ``extra_ahead``: sequences the engine
        does not see yet that will run before it (a model host's requests waiting for a load)."""
        stats = self.engine.stats()
        waiting_ahead, tokens_ahead = stats.waiting_at_or_before(priority)
        behind = max(0, stats.num_waiting - waiting_ahead)
        in_flight = max(0, self._in_flight_sequences() - behind) + extra_ahead
        return predict_ttft(prompt_tokens=prompt_tokens, waiting_prompt_tokens=tokens_ahead,
                            in_flight=in_flight, max_num_seqs=self.slots(),
                            summary=self.perf.summary())

    # --- accounting -----------------------------------------------------------------
    def begin(self, request_id: str, engine_ids: list[str], prompt_tokens: int, arrival: float) -> ActiveRequest:
        a = ActiveRequest(engine_ids=engine_ids, prompt_tokens=prompt_tokens, arrival=arrival,
                          queued=self._in_flight_sequences() + len(engine_ids) > self.slots())
        self.active[request_id] = a
        self._idle.clear()
        return a

    @staticmethod
    def on_tokens(a: ActiveRequest, count: int) -> None:
        if count <= 0:
            return
        now = time.monotonic()
        if a.first_token_at is None:
            a.first_token_at = now
        elif a.last_token_at is not None:
            a.itls.append(now - a.last_token_at)
        a.last_token_at = now
        a.completion_tokens += count

    def end(self, request_id: str, finish_reason: str) -> None:
        a = self.active.pop(request_id, None)
        if not self.active:
            self._idle.set()
            if self.on_idle is not None:
                self.on_idle()
        if a is None:
            return
        now = time.monotonic()
        if a.first_token_at is not None and finish_reason in ("stop", "length", "tool_calls"):
            e2e = (a.last_token_at or now) - a.arrival
            self.perf.record(RequestTiming(finished_at=now, ttft_s=a.first_token_at - a.arrival, e2e_s=e2e,
                                           prompt_tokens=a.prompt_tokens, completion_tokens=a.completion_tokens,
                                           queued=a.queued))
            if self.metrics:
                self.metrics.observe_request(ttft_s=a.first_token_at - a.arrival, itls=a.itls, e2e_s=e2e,
                                             prompt_tokens=a.prompt_tokens, completion_tokens=a.completion_tokens,
                                             finish_reason=finish_reason)
        elif self.metrics:
            self.metrics.success.labels(self.metrics.model_name, finish_reason).inc()

    # --- the capacity document ------------------------------------------------------
    def capacity(self, prompt_tokens: int | None = None, max_tokens: int | None = None,
                 priority: int = 0) -> Capacity:
        s = self.settings
        stats = self.engine.stats()
        models = []
        if self.state != "starting":
            info = self.engine.info
            models.append(ModelEntry(id=info.id, root=info.root, max_model_len=info.max_model_len, dtype=info.dtype,
                                     quantization=info.quantization, weight_bytes=info.weight_bytes,
                                     quantization_reason=self.quantization_reason or info.note,
                                     random_weights=info.random_weights, source=info.source,
                                     converted=info.converted if info.source else None, running=stats.num_running,
                                     waiting=stats.num_waiting))
        summary = self.perf.summary()
        in_flight = self._in_flight_sequences()
        load = EngineLoad(running=stats.num_running, waiting=stats.num_waiting,
                          waiting_prompt_tokens=stats.waiting_prompt_tokens,
                          kv_cache_usage=stats.kv_cache_usage, kv_free_tokens=stats.kv_free_tokens,
                          kv_total_tokens=stats.kv_total_tokens,
                          max_concurrent_sequences=self.slots(),
                          queue_by_priority=[PriorityQueue(priority=p, waiting=n, waiting_prompt_tokens=t)
                                             for p, (n, t) in sorted(stats.waiting_by_priority.items())])
        cap = Capacity(
            timestamp=time.time(),
            identity=Identity(node_id=self.node_id, name=self.name, zone=s.zone, labels=dict(s.labels),
                              version=__version__, engine=self.engine.name, simulated=self.engine.name == "sim"),
            state=self.state, models=models, accelerators=self.probe.read(), cpu_only=self.probe.cpu_only,
            load=load,
            performance=Performance(**{k: v for k, v in summary.items() if k != "mean_e2e_s"}),
            idle=in_flight == 0 and stats.num_running == 0 and stats.num_waiting == 0,
            admission={"in_flight": in_flight, "queued": self.queued(),
                       "max_queued_requests": s.max_queued_requests, "max_queue_wait_s": s.max_queue_wait},
        )
        if stats.block_size:
            cap.cache = CacheInfo(block_size=stats.block_size, prefix_caching=stats.prefix_caching,
                                  kv_events=getattr(self.engine, "kv_events", None) is not None)
        if prompt_tokens is not None:
            pred = self.predict(prompt_tokens, priority)
            mt = max_tokens or 0
            refused = self.refusal(prompt_tokens, 1, pred, priority)
            reason, admit = "ok", True
            if refused is not None and refused.code == "not_ready":
                reason, admit = refused.reason, False
            elif models and prompt_tokens + mt > models[0].max_model_len:
                reason, admit = f"prompt_tokens + max_tokens exceeds max_model_len {models[0].max_model_len}", False
            elif refused is not None:
                reason, admit = refused.reason, False
            cap.prediction = Prediction(prompt_tokens=prompt_tokens, max_tokens=mt,
                                        predicted_ttft_ms=pred.predicted_ttft_s * 1000,
                                        predicted_queue_wait_ms=pred.queue_wait_s * 1000, would_admit=admit,
                                        reason=f"{reason} ({pred.basis})")
        return cap
