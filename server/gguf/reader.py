"""Read a GGUF file's header: architecture, hyperparameters, tensor types, tokenizer data.

Every failure a user can cause (a file that is not GGUF, a truncated or corrupt one, an
architecture or tensor type edgefleet cannot run) raises :class:`GgufError`, whose message
names the file and the reason; the CLI prints it without a traceback.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
# GGUF architecture name -> the Hugging Face class the converted directory declares.
ARCHITECTURES = {"llama": "LlamaForCausalLM"}
# Tensor types that need no dequantization at all.
FLOAT_TYPES = ("F32", "F16", "BF16")
# Below this many parameters a model computes in float32: small models' greedy answers sit on
# near-ties that bf16 rounding flips (SmolLM2-135M answers "The capital of France is Paris."
# in float32 and drifts into French phrases in bfloat16), and float32 costs them little.
FLOAT32_BELOW_PARAMS = 1_000_000_000


class GgufError(ValueError):
    """A GGUF file edgefleet cannot serve; the message says which file and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(slots=True)
class TensorEntry:
    name: str  # GGUF name, e.g. blk.0.attn_q.weight
    type_name: str  # Q4_1, F32, ...
    shape: tuple[int, ...]  # torch order: [out_features, in_features] for matrices
    n_bytes: int
    data: Any  # numpy view into the memory-mapped file


@dataclass(slots=True)
class GgufFile:
    path: Path
    architecture: str
    metadata: dict[str, Any]
    tensors: dict[str, TensorEntry]
    file_type: str | None  # general.file_type as a name (MOSTLY_Q4_1)
    tensor_types: Counter = field(default_factory=Counter)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def arch(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def params(self) -> int:
        n = 0
        for t in self.tensors.values():
            size = 1
            for d in t.shape:
                size *= d
            n += size
        return n

    @property
    def quantization(self) -> str:
        """The dominant quantized type of the matrices (Q4_1), or F16/F32."""
        counts = Counter({t: n for t, n in self.tensor_types.items() if t != "F32"})
        return counts.most_common(1)[0][0] if counts else "F32"


def _value(field_: Any) -> Any:
    from gguf import GGUFValueType

    if not field_.types:
        return None
    if field_.types[0] == GGUFValueType.ARRAY and len(field_.types) > 1 and field_.types[1] == GGUFValueType.STRING:
        return [bytes(field_.parts[i]).decode("utf-8", errors="replace") for i in field_.data]
    return field_.contents()


def open_gguf(path: str | os.PathLike) -> GgufFile:
    """Parse the header and map the tensor data (no tensor is read yet)."""
    path = Path(path).expanduser()
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise GgufError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if magic != GGUF_MAGIC:
        raise GgufError(path, "not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        from gguf import GGMLQuantizationType, GGUFReader
    except ImportError:  # pragma: no cover - a project dependency
        raise GgufError(path, "reading GGUF needs the 'gguf' package (pip install gguf)") from None
    try:
        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # the reader raises anything from struct/numpy on a damaged header
        raise GgufError(path, f"truncated or corrupt GGUF file ({type(exc).__name__}: {exc})") from None
    meta: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = _value(f)
        except Exception as exc:
            raise GgufError(path, f"corrupt metadata field {key!r} ({exc})") from None
    size = path.stat().st_size
    tensors: dict[str, TensorEntry] = {}
    types: Counter = Counter()
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise GgufError(path, f"truncated GGUF file: tensor {t.name!r} ends at byte {end:,} "
                            f"but the file has {size:,} bytes")
        name = GGMLQuantizationType(t.tensor_type).name
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = TensorEntry(t.name, name, shape, int(t.n_bytes), t.data)
        types[name] += 1
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GgufError(path, "corrupt GGUF file: no general.architecture in its metadata")
    ft = meta.get("general.file_type")
    file_type = None
    if isinstance(ft, int):
        from gguf import LlamaFileType

        try:
            file_type = LlamaFileType(ft).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = str(ft)
    return GgufFile(path, arch, meta, tensors, file_type, types)


def check_supported(g: GgufFile) -> None:
    """Raise GgufError unless edgefleet can run this file's architecture and tensor types."""
    from gguf.quants import _type_traits  # the types gguf can dequantize

    if g.architecture not in ARCHITECTURES:
        raise GgufError(g.path, f"unsupported architecture {g.architecture!r} "
                        f"(supported: {', '.join(ARCHITECTURES)})")
    known = {q.name for q in _type_traits} | set(FLOAT_TYPES)
    bad = sorted({t for t in g.tensor_types if t not in known})
    if bad:
        where = next(e.name for e in g.tensors.values() if e.type_name in bad)
        raise GgufError(g.path, f"unsupported tensor type {', '.join(bad)} (first in {where!r})")
    for key in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count"):
        if g.arch(key) is None:
            raise GgufError(g.path, f"corrupt GGUF file: metadata has no {g.architecture}.{key}")
    if "token_embd.weight" not in g.tensors:
        raise GgufError(g.path, "corrupt GGUF file: no token_embd.weight tensor")
    if g.metadata.get("tokenizer.ggml.tokens") is None:
        raise GgufError(g.path, "the file carries no tokenizer (tokenizer.ggml.tokens)")


def hf_config(g: GgufFile) -> dict[str, Any]:
    """The Hugging Face config.json equivalent of the file's hyperparameters."""
    heads = int(g.arch("attention.head_count"))
    hidden = int(g.arch("embedding_length"))
    tokens = g.metadata.get("tokenizer.ggml.tokens") or []
    from .tokenizer import special_ids

    ids = special_ids(g)
    cfg: dict[str, Any] = {
        "architectures": [ARCHITECTURES[g.architecture]],
        "model_type": g.architecture,
        "hidden_size": hidden,
        "intermediate_size": int(g.arch("feed_forward_length")),
        "num_hidden_layers": int(g.arch("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g.arch("attention.head_count_kv", heads)),
        "head_dim": int(g.arch("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(g.arch("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(g.arch("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g.arch("context_length", 4096)),
        "vocab_size": int(g.arch("vocab_size", len(tokens))),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32" if g.params < FLOAT32_BELOW_PARAMS else "bfloat16",
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
    }
    return cfg
