"""The native engine: a small paged-attention engine in plain PyTorch (CPU and GPU).

Read in this order: sequence -> block_manager -> scheduler -> model_runner (the only place
lists become tensors) -> models/llama + attention -> sampler -> llm_engine (one step) ->
engine (the async front implementing ``server.engine.base.Engine``).

``NativeEngine`` is imported lazily so that the scheduler and block manager (and their
tests) load without torch.
"""

import os
import sys
from typing import Any

# Torch's GNU OpenMP spins while waiting at the barrier that ends every parallel op. On a
# CPU shared with other services (an edge node, a CI box) a spinning thread burns the
# timeslice its partner needs, and a step of ~100 parallel ops can take seconds. Passive
# waiting costs microseconds per op when the CPU is idle. Only effective before torch loads;
# an explicit OMP_WAIT_POLICY wins.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["NativeEngine"]


def __getattr__(name: str) -> Any:
    if name == "NativeEngine":
        from .engine import NativeEngine

        return NativeEngine
    raise AttributeError(name)
