"""The native engine: a small paged-attention engine in plain PyTorch (CPU and GPU).

Read in this order: sequence -> block_manager -> scheduler -> model_runner (the only place
lists become tensors) -> models/llama + attention -> sampler -> llm_engine (one step) ->
engine (the async front implementing ``server.engine.base.Engine``).

``NativeEngine`` is imported lazily so that the scheduler and block manager (and their
tests) load without torch.
"""

from typing import Any

__all__ = ["NativeEngine"]


def __getattr__(name: str) -> Any:
    if name == "NativeEngine":
        from .engine import NativeEngine

        return NativeEngine
    raise AttributeError(name)
