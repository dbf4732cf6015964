"""GGUF tensors under Hugging Face names: dequantized floats, or 4-bit blocks kept as they are.

Block layouts (ggml, 32 weights per block, along the input dimension)::

    Q4_0  | d: f16 | qs: 16 bytes |          w = d * (q - 8)
    Q4_1  | d: f16 | m: f16 | qs: 16 bytes | w = d * q + m
    qs byte j holds weight j in its low nibble and weight j + 16 in its high nibble.

Both map exactly onto the native engine's int4 layout (``quant.Int4Weight``, group 32):
Q4_0 as zero 8, Q4_1 as zero 0 plus a per-group float ``mins``. llama.cpp's converter
permutes the rows of q/k for its rotary layout; that is undone here, on floats and on blocks
alike (a row permutation moves whole groups, so it is exact).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from .reader import GgufError, GgufFile, TensorEntry

DIRECT_INT4 = ("Q4_0", "Q4_1")
_BLOCK = 32

_LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if base in _TOP:
        return f"{_TOP[base]}.{suffix}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}.{suffix}"
    return None


def unpermute_rows(rows: int, n_head: int) -> torch.Tensor:
    """Index that reverses llama.cpp's q/k row permutation: out = w[index]."""
    half = rows // n_head // 2
    # llama.cpp: w.reshape(n_head, 2, half, ...).swapaxes(1, 2): file row (h, i, j) holds
    # original row (h, j, i) (h head, i < half, j < 2). Original row (h, j, i) is thus file
    # row h * 2 * half + 2 * i + j.
    return torch.arange(rows).view(n_head, half, 2).transpose(1, 2).reshape(-1)


class GgufWeights:
    """The ``Weights`` interface of the native loader, reading a GGUF file."""

    def __init__(self, g: GgufFile):
        self.g = g
        self._names: dict[str, TensorEntry] = {}
        for entry in g.tensors.values():
            name = hf_name(entry.name)
            if name is not None:
                self._names[name] = entry
        heads = int(g.arch("attention.head_count"))
        self._heads = {"q_proj": heads, "k_proj": int(g.arch("attention.head_count_kv", heads))}

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def keys(self) -> list[str]:
        return list(self._names)

    def type_of(self, name: str) -> str:
        return self._names[name].type_name

    def _perm(self, name: str, rows: int) -> torch.Tensor | None:
        proj = name.rsplit(".", 2)[-2]
        return unpermute_rows(rows, self._heads[proj]) if proj in self._heads else None

    def get(self, name: str) -> torch.Tensor:
        """Float32 values, HF layout."""
        from gguf.quants import dequantize

        entry = self._names.get(name)
        if entry is None:
            raise ValueError(f"{self.g.path}: GGUF file has no tensor for {name!r}")
        try:
            arr = dequantize(np.asarray(entry.data), _qtype(entry.type_name))
        except Exception as exc:
            raise GgufError(self.g.path, f"cannot decode tensor {entry.name!r} ({entry.type_name}): {exc}") from None
        t = torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(entry.shape)  # a copy: the file is read-only
        perm = self._perm(name, t.shape[0]) if t.dim() == 2 else None
        return t[perm].contiguous() if perm is not None else t

    def maybe(self, name: str) -> torch.Tensor | None:
        return self.get(name) if name in self else None

    def int4(self, name: str):
        """``quant.Int4Weight`` (group 32) straight from Q4_0 / Q4_1 blocks; None otherwise."""
        from server.engine.native.quant import Int4Weight

        entry = self._names.get(name)
        if entry is None or entry.type_name not in DIRECT_INT4:
            return None
        n, k = entry.shape
        per = 18 if entry.type_name == "Q4_0" else 20
        raw = torch.from_numpy(np.asarray(entry.data, dtype=np.uint8).reshape(n, k // _BLOCK, per).copy())
        d = raw[..., 0:2].contiguous().view(torch.float16)[..., 0].float()
        qs = raw[..., per - 16:]
        q = torch.cat([qs & 0x0F, qs >> 4], dim=-1).reshape(n, k)
        if entry.type_name == "Q4_0":
            zeros = torch.full_like(d, 8, dtype=torch.uint8)
            mins = None
        else:
            zeros = torch.zeros_like(d, dtype=torch.uint8)
            mins = raw[..., 2:4].contiguous().view(torch.float16)[..., 0].float()
        w = Int4Weight(q, d, zeros, _BLOCK, mins=mins)
        perm = self._perm(name, n)
        if perm is not None:
            w = Int4Weight(w.q[perm].contiguous(), w.scales[perm].contiguous(), w.zeros[perm].contiguous(),
                           _BLOCK, mins=None if w.mins is None else w.mins[perm].contiguous())
        return w


def _qtype(name: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name]
