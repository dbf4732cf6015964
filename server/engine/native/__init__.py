"""The native engine: a small paged-attention engine in plain PyTorch (CPU and GPU).

Read in this order: sequence -> block_manager -> scheduler -> model_runner (the only place
lists become tensors) -> models/llama + attention -> sampler -> llm_engine (one step) ->
engine (the async front implementing ``server.engine.base.Engine``).
"""

from .engine import NativeEngine

__all__ = ["NativeEngine"]
