"""A uvicorn server whose SIGTERM drains, shared by the node and the router.

First SIGTERM/SIGINT: ``drain()`` runs on the event loop (stop admitting, let in-flight
work finish up to a timeout, end the rest in band), then the server exits 0. A second
signal while draining forces the exit. SIGHUP, when ``on_hup`` is given, calls it on the
loop (reload configuration, reopen logs) and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

log = logging.getLogger("edgefleet")

FLUSH_S = 0.3  # after the drain: lets ended streams flush their last event before sockets close


def draining_server(config: Any, drain: Callable[[], Awaitable[Any]], can_drain: Callable[[], bool] = lambda: True,
                    on_hup: Callable[[], Any] | None = None) -> Any:
    """A ``uvicorn.Server`` for ``config`` (see the module doc). ``can_drain``: false while
    there is nothing to drain yet (a node still loading its engine exits at once)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        exit_code = 0

        def __init__(self) -> None:
            super().__init__(config)
            self.draining = False
            self._loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            if on_hup is not None:
                self._loop.add_signal_handler(signal.SIGHUP, self._hup)
            await super().serve(sockets)

        def _hup(self) -> None:
            try:
                on_hup()  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a bad reload must not stop the server
                log.exception("SIGHUP handling failed; serving on with the previous configuration")

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.draining or self._loop is None or not can_drain():
                self.should_exit = True
                if self.draining:
                    self.force_exit = True
                return
            self.draining = True
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

        async def _drain(self) -> None:
            try:
                await drain()
            finally:
                await asyncio.sleep(FLUSH_S)
                self.should_exit = True

    return DrainingServer()
