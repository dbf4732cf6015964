"""Engine-side helpers of the model host: building a model's engine and runtime, the
libraries imported ahead of the first load, the memory a loaded model holds, and freeing it."""

from __future__ import annotations

import gc
import logging
from typing import Any

from server.config import NodeSettings

log = logging.getLogger("edgefleet.host")


def default_runtime_factory(settings: NodeSettings, engine: Any) -> Any:
    from server.runtime import NodeRuntime

    return NodeRuntime(settings, engine)


def default_engine_factory(settings: NodeSettings) -> Any:
    from server.engine import create_engine

    if settings.quantization == "auto":
        from server.plan import choose_quantization

        settings = settings.model_copy(update={"quantization": choose_quantization(settings).method})
    if settings.engine == "vllm":
        from server.host_sleep import make_vllm_engine, vllm_sleep_available

        return make_vllm_engine(settings, sleep=vllm_sleep_available())
    return create_engine(settings)


def measured_bytes(runtime: Any, estimate: int) -> int:
    """Weights the engine reports plus its KV cache; the estimate where it reports nothing."""
    try:
        info = runtime.engine.info
        stats = runtime.engine.stats()
    except Exception:
        return estimate
    if not info.weight_bytes:
        return estimate
    kv = 0
    if stats.kv_total_tokens and estimate:
        from server.host_config import kv_bytes_per_token_of

        kv = stats.kv_total_tokens * kv_bytes_per_token_of(runtime.settings)
    return int(info.weight_bytes + kv) or estimate


_PREIMPORT = {"native": ("server.engine.native.setup", "transformers:AutoTokenizer"),
              "vllm": ("server.engine.vllm_engine", "vllm")}


def preimport(engines: set[str]) -> None:
    """Import the engines' libraries once at start, off the event loop: in a fresh process
    they cost far more than a small model's load (native: ~11 s of the first load's ~12 s
    on a 2-core machine; later loads of the demo model take 0.2-0.8 s)."""
    import importlib

    for kind in sorted(engines):
        for name in _PREIMPORT.get(kind, ()):
            mod, _, attr = name.partition(":")
            try:
                m = importlib.import_module(mod)
                if attr:
                    getattr(m, attr)
            except Exception as exc:  # the load itself will report it properly
                log.debug("pre-import of %s failed: %s", name, exc)


def collect() -> None:
    # NodeRuntime.start_engine freezes the heap; an unloaded model's objects must be collectable.
    gc.unfreeze()
    gc.collect()
