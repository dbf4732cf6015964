"""Releasing a model's engine: the slot's state changes at once, the engine follows.

:func:`detach` marks a slot ``sleeping`` or ``unloaded`` synchronously, so no request can
acquire it from that instant, and returns the awaitable that puts its engine to sleep (an
engine with ``sleep()``/``wake_up()``, e.g. vLLM's sleep mode on a GPU) or stops it and
returns its memory. :func:`fail` marks a failed load or a dead engine, with the back-off
before a request may retry (:func:`server.host_policy.backoff_s`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

from server.host_engines import collect
from server.host_policy import backoff_s
from server.host_slots import ModelSlot

log = logging.getLogger("edgefleet.host")


def detach(slot: ModelSlot, why: str, allow_sleep: bool) -> Awaitable[None] | None:
    """Mark the slot released now; returns the awaitable that stops (or puts to sleep) its
    engine, or None when there is nothing to release. The caller cancels its idle timer."""
    runtime = slot.runtime
    if runtime is None or slot.state not in ("loaded", "sleeping"):
        return None
    if slot.state == "sleeping" and allow_sleep:
        return None  # already asleep
    engine = runtime.engine
    slot.reason = why
    if allow_sleep and getattr(engine, "can_sleep", False):
        slot.state = "sleeping"
        return _finish_sleep(slot, engine, why)
    slot.runtime = None
    slot.state = "unloaded"
    return _finish_unload(slot, engine, why)


async def _finish_sleep(slot: ModelSlot, engine: Any, why: str) -> None:
    await engine.sleep()
    log.info("%s is asleep: %s", slot.spec.name, why)


async def _finish_unload(slot: ModelSlot, engine: Any, why: str) -> None:
    with contextlib.suppress(Exception):
        await engine.stop()
    del engine
    collect()
    log.info("%s unloaded: %s", slot.spec.name, why)


def fail(slot: ModelSlot, reason: str, now: float) -> None:
    slot.state = "failed"
    slot.reason = reason
    slot.failures += 1
    slot.retry_at = now + backoff_s(slot.failures)
