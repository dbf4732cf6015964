"""The model host's keep_alive timers: when a loaded model has been idle long enough, release it.

keep_alive has Ollama's meaning: idle seconds after the last request ends (``0``: at once;
``None``: never). A model's own value comes from its settings; a request may override it for
its model from then on (``ModelSlot.keep_alive_s``). Pinned models never release. The
decision itself is :func:`server.host_policy.idle_expired`; this module only keeps the timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from server.host_policy import idle_expired
from server.host_slots import ModelSlot


class KeepAliveTimers:
    def __init__(self, clock: Callable[[], float], release: Callable[[ModelSlot, str], None]):
        self.clock = clock
        self.release = release  # marks the slot released now and stops its engine in the background

    def touch(self, slot: ModelSlot) -> None:
        slot.last_used = self.clock()
        slot.last_used_unix = time.time()

    def cancel(self, slot: ModelSlot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    def schedule(self, slot: ModelSlot) -> None:
        """Called after a load and whenever the model's last request ends."""
        self.cancel(slot)
        ka = slot.keep_alive_s
        if ka is None or slot.spec.pinned or slot.state != "loaded":
            return
        if slot.runtime is not None and not slot.runtime.active:
            self.touch(slot)
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule
            slot.timer = asyncio.get_running_loop().call_later(ka, self._check, slot)

    def _check(self, slot: ModelSlot) -> None:
        slot.timer = None
        if slot.state != "loaded":
            return
        ka = slot.keep_alive_s
        if idle_expired(ka, slot.spec.pinned, slot.busy, slot.last_used, self.clock()):
            self.release(slot, f"idle past keep_alive ({ka:g} s)")
        elif ka is not None and not slot.spec.pinned:
            # Not yet idle long enough, or busy: look again when it could be (a request that
            # acquired the model but failed before it began never calls on_idle).
            left = slot.last_used + ka - self.clock()
            delay = max(0.5, ka if slot.busy else left)
            slot.timer = asyncio.get_running_loop().call_later(delay, self._check, slot)
