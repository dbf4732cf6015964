"""Build a ready LLMEngine from NodeSettings: device, dtype, tokenizer, weights, KV budget."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..base import ModelInfo, ProgressFn
from . import ops
from .llm_engine import EngineConfig, LLMEngine
from .loader import load_model, option_off
from .model_runner import ModelRunner, kv_bytes_per_block

log = logging.getLogger(__name__)

DEFAULT_KV_GB = 2.0


@dataclass(slots=True)
class BuiltEngine:
    core: LLMEngine
    tokenizer: Any
    info: ModelInfo


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def eos_ids(model_dir: Path, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (_json(model_dir / "generation_config.json"), _json(model_dir / "config.json")):
        v = src.get("eos_token_id")
        ids |= set(v) if isinstance(v, list) else ({v} if isinstance(v, int) else set())
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def sliding_window(hf: dict[str, Any]) -> int | None:
    """The attention window when one applies (Mistral; Qwen2 with use_sliding_window)."""
    window = hf.get("sliding_window")
    if not window:
        return None
    if hf.get("model_type") == "qwen2" and not hf.get("use_sliding_window", False):
        return None
    return int(window)


def engine_config(settings: Any, loaded, device: torch.device) -> EngineConfig:
    opts = dict(settings.engine_options or {})
    block_size = int(opts.get("block_size", 16))
    max_len = int(settings.max_model_len or loaded.config.max_position_embeddings)
    window = sliding_window(loaded.hf_config)
    if window is not None and max_len > window:
        if settings.max_model_len:
            raise ValueError(f"the model uses sliding-window attention ({window} tokens), which the native "
                             f"engine does not implement; max_model_len must be <= {window}")
        max_len = window  # within the window, full attention is the same computation
    chunked = bool(opts.get("enable_chunked_prefill", True))
    batched = int(opts.get("max_num_batched_tokens", 2048))
    if not chunked:  # a whole prompt must fit in one step
        batched = max(batched, max_len)
    per_block = kv_bytes_per_block(loaded, block_size)
    max_seqs = int(settings.max_num_seqs)
    if settings.kv_cache_gb:
        num_blocks = int(settings.kv_cache_gb * (1 << 30)) // per_block
    else:  # enough for every slot at full length, capped by the default budget
        want = max_seqs * -(-max_len // block_size)
        num_blocks = min(want, int(DEFAULT_KV_GB * (1 << 30)) // per_block)
    if num_blocks * block_size < max_len:
        raise ValueError(f"KV cache of {num_blocks} blocks x {block_size} tokens cannot hold one "
                         f"sequence of max_model_len {max_len}; raise kv_cache_gb or lower max_model_len")
    return EngineConfig(num_blocks=num_blocks, block_size=block_size, max_num_seqs=max_seqs,
                        max_num_batched_tokens=batched, max_model_len=max_len,
                        enable_prefix_caching=bool(opts.get("enable_prefix_caching", True)),
                        enable_chunked_prefill=chunked)


def decode_graph_mode(value: Any, device: torch.device) -> str | None:
    """``decode_graphs``: auto (CUDA graphs on a GPU with Triton), on/cuda, off, or eager
    (the graphs' static-buffer path without capture: how CPU tests check it)."""
    if option_off(value):
        return None
    v = str(value).strip().lower()
    if v == "eager":
        return "eager"
    if v in ("auto", "on", "true", "1", "cuda"):
        usable = device.type == "cuda" and ops.triton_available()
        if v != "auto" and not usable:
            raise ValueError("decode_graphs needs a CUDA device with Triton (the graphs replay the "
                             "Triton attention kernel)")
        return "cuda" if usable else None
    raise ValueError(f"decode_graphs must be auto, on, off or eager, not {value!r}")


def pick_device(opts: dict[str, Any]) -> torch.device:
    name = opts.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_engine(settings: Any, model_dir: Path, model_id: str,
                 progress: ProgressFn | None = None, weights: Any = None) -> BuiltEngine:
    """``weights``: a tensor source other than the directory's safetensors (see ``load_model``)."""
    from transformers import AutoTokenizer

    from ...demo_model import is_random_weights

    opts = dict(settings.engine_options or {})
    device = pick_device(opts)
    if "num_threads" in opts:
        torch.set_num_threads(int(opts["num_threads"]))
    source = None
    if model_dir.suffix.lower() == ".gguf":  # config and tokenizer from its metadata; tensors from the file
        from ...gguf.convert import metadata_dir
        from ...gguf.weights import GgufWeights

        source = f"gguf:{model_dir.name}"
        model_dir, gfile, _sha = metadata_dir(model_dir, model_id)
        weights = GgufWeights(gfile)
    if progress:
        progress("loading tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # A second instance for the worker thread's detokenizer: a fast tokenizer mutates its
    # Rust state on encode, and sharing one across threads can fail with "Already borrowed".
    worker_tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    loaded = load_model(model_dir, settings.dtype, settings.quantization, device,
                        settings.max_model_len, opts, progress, weights)
    cfg = engine_config(settings, loaded, device)
    if progress:
        progress(f"allocating KV cache: {cfg.num_blocks} blocks of {cfg.block_size} tokens")
    graphs_opt = opts.get("decode_graphs", "auto")
    graphs = decode_graph_mode(graphs_opt, device)
    runner = ModelRunner(loaded, cfg.num_blocks, cfg.block_size, device, scratch_block=graphs is not None)
    if graphs is not None:
        if progress:
            progress(f"capturing decode graphs for batch sizes up to {cfg.max_num_seqs}")
        try:
            runner.enable_decode_graphs(cfg.max_num_seqs, cfg.max_model_len, replay=graphs)
        except Exception as exc:  # a node that decodes eagerly beats a node that does not start
            if str(graphs_opt).strip().lower() != "auto":
                raise
            log.warning("decode graph capture failed (%s: %s); decoding without graphs",
                        type(exc).__name__, exc)
            runner.graphs = None
    core = LLMEngine(runner, worker_tokenizer, cfg, eos_ids(model_dir, tokenizer))
    dtype = str(loaded.dtype).removeprefix("torch.")
    note = f"native engine on {device.type}"
    if loaded.quantization in ("int8", "int4"):
        note += f"; weight-only {loaded.quantization} quantized on load"
    if loaded.load_note:
        note += f"; {loaded.load_note}"
    if runner.graphs is not None and runner.graphs.replay_mode == "cuda":
        note += f"; decode steps replayed as CUDA graphs (batch <= {runner.graphs.max_batch})"
    info = ModelInfo(id=model_id, root=str(model_dir), max_model_len=cfg.max_model_len, dtype=dtype,
                     quantization=loaded.quantization, weight_bytes=loaded.weight_bytes,
                     random_weights=is_random_weights(model_dir), note=note, source=source)
    return BuiltEngine(core, tokenizer, info)
