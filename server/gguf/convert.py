"""A GGUF file as a Hugging Face directory in the model cache, keyed by the file's sha256.

Two levels: ``metadata_dir`` (config.json, generation_config.json, tokenizer files: what the
native engine needs beside the GGUF tensors) and ``convert_to_hf`` (the same plus the
dequantized weights as safetensors: what vLLM, which reads no GGUF, serves). Both are built
once into a temporary directory and renamed into place, so a crash leaves no half copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .reader import GgufFile, check_supported, hf_config, open_gguf
from .tokenizer import special_ids, write_tokenizer_files
from .weights import GgufWeights

SHARD_BYTES = 2 << 30
CONVERSION_VERSION = 1


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _models_root() -> Path:
    from server.demo_model import cache_dir

    return cache_dir() / "models"


def _source_record(g: GgufFile, sha: str, converted: bool) -> dict:
    return {"source": f"gguf:{g.path.name}", "path": str(g.path), "sha256": sha, "converted": converted,
            "quantization": g.quantization, "tensor_types": dict(g.tensor_types),
            "conversion_version": CONVERSION_VERSION}


def _write_metadata(g: GgufFile, out: Path, model_id: str) -> None:
    cfg = hf_config(g)
    cfg["edgefleet_model_id"] = model_id
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    ids = special_ids(g)
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "do_sample": False}, indent=2))
    write_tokenizer_files(g, out)
    lic = g.metadata.get("general.license")
    (out / "README.md").write_text(f"# {model_id}\n\nConverted by edgefleet from {g.path.name} "
                                   f"({g.quantization}).{f' License: {lic}.' if lic else ''}\n")


def _build(target: Path, fill: Callable[[Path], None]) -> Path:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        tmp.rename(target)
    except OSError:
        if not (target / "edgefleet_source.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; theirs is identical
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def model_id_for(path: Path) -> str:
    return Path(path).name.removesuffix(".gguf")


def metadata_dir(path: str | os.PathLike, model_id: str | None = None) -> tuple[Path, GgufFile, str]:
    """(directory with config and tokenizer, the parsed file, its sha256)."""
    g = open_gguf(path)
    check_supported(g)
    sha = file_sha256(g.path)
    model_id = model_id or model_id_for(g.path)
    target = _models_root() / f"gguf-{sha[:16]}-meta"
    if not (target / "edgefleet_source.json").exists():
        def fill(out: Path) -> None:
            _write_metadata(g, out, model_id)
            (out / "edgefleet_source.json").write_text(json.dumps(_source_record(g, sha, False), indent=2))
        _build(target, fill)
    return target, g, sha


def convert_to_hf(path: str | os.PathLike, progress: Callable[[str], None] | None = None,
                  dtype: str | None = None) -> Path:
    """The GGUF file dequantized into a Hugging Face directory (built once per file hash).
    ``dtype``: default float32 for small models, bfloat16 from 1B parameters (see reader)."""
    import torch
    from safetensors.torch import save_file

    g = open_gguf(path)
    check_supported(g)
    dtype = dtype or hf_config(g)["torch_dtype"]
    sha = file_sha256(g.path)
    target = _models_root() / f"gguf-{sha[:16]}-hf-{dtype}"
    if (target / "edgefleet_source.json").exists():
        return target
    torch_dtype = getattr(torch, dtype)
    ws = GgufWeights(g)

    def fill(out: Path) -> None:
        if progress:
            progress(f"converting {g.path.name} ({g.quantization}) to a {dtype} Hugging Face directory")
        _write_metadata(g, out, model_id_for(g.path))
        cfg = json.loads((out / "config.json").read_text())
        cfg["torch_dtype"] = dtype
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
        shards: list[dict] = [{}]
        size = 0
        for name in ws.keys():
            t = ws.get(name).to(torch_dtype)
            if size and size + t.numel() * t.element_size() > SHARD_BYTES:
                shards.append({})
                size = 0
            shards[-1][name] = t
            size += t.numel() * t.element_size()
        if len(shards) == 1:
            save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        else:
            index = {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(out / fname), metadata={"format": "pt"})
                index.update({k: fname for k in shard})
            (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}, indent=2))
        (out / "edgefleet_source.json").write_text(json.dumps(_source_record(g, sha, True), indent=2))

    return _build(target, fill)


def source_record(model_dir: Path) -> dict | None:
    try:
        return json.loads((Path(model_dir) / "edgefleet_source.json").read_text())
    except (OSError, ValueError):
        return None
