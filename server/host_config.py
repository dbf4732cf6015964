"""From the command line and the TOML file to the host's model entries.

Sources, merged in this order (a later one refines an earlier one for the same model):

1. ``--model A --model B`` (each a Hugging Face directory, a ``*.gguf`` file or a hub id);
2. ``--models-dir DIR``: every directory under DIR holding a ``config.json`` (not descending
   into it) and every ``*.gguf`` file;
3. ``[[models]]`` tables in the TOML config: ``model`` (path), ``name`` (served name), and
   per-model ``engine``, ``dtype``, ``quantization``, ``max_model_len``, ``kv_cache_gb``,
   ``max_num_seqs``, ``keep_alive``, ``pinned``. A table whose ``model`` (or, without
   ``model``, whose ``name``) matches an entry from 1 or 2 sets that entry's settings;
   otherwise it adds a model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from server.config import NodeSettings
from server.host import ModelSpec
from server.host_policy import GiB, parse_keep_alive

PER_MODEL_SETTINGS = ("engine", "dtype", "quantization", "max_model_len", "kv_cache_gb", "max_num_seqs",
                      "served_model_name", "engine_options")
TABLE_KEYS = frozenset({"model", "name", "keep_alive", "pinned", *PER_MODEL_SETTINGS})
DEFAULT_KV_GB = 4.0


def discover(models_dir: str | os.PathLike[str]) -> list[str]:
    root = Path(models_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"--models-dir {models_dir}: not a directory")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        if "config.json" in filenames:
            found.append(dirpath)
            dirnames[:] = []  # a model directory's subfolders are its own
            continue
        found.extend(str(Path(dirpath) / f) for f in sorted(filenames) if f.lower().endswith(".gguf"))
    return found


def is_gguf(model: str | None) -> bool:
    return bool(model) and str(model).lower().endswith(".gguf")


def served_name(settings: NodeSettings) -> str:
    if settings.served_model_name:
        return settings.served_model_name
    if is_gguf(settings.model):
        return Path(str(settings.model)).name[: -len(".gguf")]
    from server.engine import resolve_model

    return resolve_model(settings)[1]


def _model_dir(settings: NodeSettings) -> Path | None:
    if settings.model is None:
        from server.demo_model import ensure_demo_model

        return ensure_demo_model()
    path = Path(settings.model).expanduser()
    return path if (path / "config.json").exists() else None


def kv_bytes_per_token_of(settings: NodeSettings) -> int:
    from server.plan import DTYPE_BYTES, kv_bytes_per_token, read_shape

    path = _model_dir(settings)
    if path is None:
        return 0
    shape = read_shape(path)
    return kv_bytes_per_token(shape, settings.dtype if settings.dtype in DTYPE_BYTES else shape.dtype)


def estimate_bytes(settings: NodeSettings) -> tuple[int, int | None]:
    """(bytes the model will hold: weights + KV cache, its max context), from config.json
    alone (server/plan.py); a GGUF file counts its size. 0 when unknown (a hub id)."""
    from server.plan import (
        DTYPE_BYTES,
        SCHEMES,
        kv_bytes_per_token,
        read_shape,
        weight_bytes,
    )

    if settings.engine == "sim":
        return 0, settings.max_model_len
    if is_gguf(settings.model):
        try:
            size = Path(str(settings.model)).expanduser().stat().st_size
        except OSError:
            size = 0
        return size + int((settings.kv_cache_gb or 0.5) * GiB), settings.max_model_len
    path = _model_dir(settings)
    if path is None:
        return 0, settings.max_model_len
    shape = read_shape(path)
    dtype = settings.dtype if settings.dtype in DTYPE_BYTES else shape.dtype
    scheme = shape.prequantized if shape.prequantized in SCHEMES else (settings.quantization or "none")
    if scheme not in SCHEMES:
        scheme = "none"
    weights = weight_bytes(shape, scheme, dtype)
    ctx = settings.max_model_len or shape.max_position
    if settings.kv_cache_gb:
        kv = int(settings.kv_cache_gb * GiB)
    else:
        kv = min(kv_bytes_per_token(shape, dtype) * ctx * settings.max_num_seqs, int(DEFAULT_KV_GB * GiB))
    return weights + kv, ctx


def memory_budget(settings: NodeSettings, explicit: int | None) -> tuple[int, str]:
    if explicit is not None:
        return explicit, "--memory-budget"
    from server.plan import available_memory

    free, source = available_memory()
    frac = settings.gpu_memory_utilization if "GPU" in source else 0.8
    return int(free * frac), f"{frac:.0%} of {source} at start"


def _key(model: str | None) -> str | None:
    if model is None:
        return None
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def _with_model(base: NodeSettings, model: str | None) -> NodeSettings:
    return base.model_copy(update={"model": model, "served_model_name": None})


def build_specs(base: NodeSettings, models: list[str | None], models_dir: str | None,
                tables: list[dict[str, Any]], keep_alive: str | float | None) -> list[ModelSpec]:
    """The host's entries. ``base`` holds the node-wide settings (engine, dtype ... as
    defaults for every model)."""
    default_ka = parse_keep_alive(keep_alive)
    entries: list[dict[str, Any]] = [{"model": m, "_source": "--model"} for m in models]
    if models_dir:
        known = {_key(e["model"]) for e in entries}
        entries += [{"model": m, "_source": "--models-dir"} for m in discover(models_dir) if _key(m) not in known]
    for i, table in enumerate(tables):
        table = {k.replace("-", "_"): v for k, v in table.items()}
        unknown = set(table) - TABLE_KEYS
        if unknown:
            raise ValueError(f"[[models]] entry {i + 1}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"allowed: {', '.join(sorted(TABLE_KEYS))}")
        if "model" not in table and "name" not in table:
            raise ValueError(f"[[models]] entry {i + 1}: needs 'model' (a path) or 'name'")
        target = None
        flagged = [e for e in entries if e["_source"] != "config" and "name" not in e]  # from 1 or 2
        for e in flagged:  # same path, and no other served name: a second name is a second entry
            if "model" in table and _key(e.get("model")) == _key(table["model"]) and (
                    "name" not in table or served_name(_with_model(base, e["model"])) == table["name"]):
                target = e
        if target is None and "model" not in table:  # by the served name entries 1-2 would get
            for e in flagged:
                if served_name(_with_model(base, e["model"])) == table["name"]:
                    target = e
        if target is None:
            entries.append({**table, "_source": "config"})
        else:
            target.update({k: v for k, v in table.items() if k != "model" or "model" not in target})
    specs: list[ModelSpec] = []
    for e in entries:
        update: dict[str, Any] = {"model": e.get("model")}
        for k in PER_MODEL_SETTINGS:
            if k in e:
                update[k] = e[k]
        if "name" in e:
            update["served_model_name"] = e["name"]
        if update.get("quantization") in ("none", ""):
            update["quantization"] = None
        settings = NodeSettings.model_validate({**base.model_dump(), "served_model_name": None, **update})
        ka = parse_keep_alive(e["keep_alive"]) if "keep_alive" in e else default_ka
        need, ctx = estimate_bytes(settings)
        name = served_name(settings)
        settings = settings.model_copy(update={"served_model_name": name})  # every engine serves it by this name
        specs.append(ModelSpec(name=name, settings=settings, keep_alive_s=ka,
                               pinned=bool(e.get("pinned", False)), memory_bytes=need, max_model_len=ctx,
                               source=e.get("_source", "config")))
    return specs
