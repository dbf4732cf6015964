"""Prefix-cache block hashes, shared by the engines (which publish them in KV events) and the
router (which computes the same names from the tokens of a request, in precise mode).

A *full* block of ``block_size`` prompt tokens is named by a 64-bit hash chained over its
parent's hash, so two blocks share a name only when their whole prefixes match::

    block_hash = int.from_bytes(blake2b(parent.to_bytes(8, "big") + tokens as int32 little-endian,
                                        digest_size=8).digest(), "big")

with ``parent = 0`` for the first block. Stable across processes and machines (unlike
Python's ``hash``). No torch, no fastapi: every layer may import it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from hashlib import blake2b


def chain_hash(parent: int | None, token_ids: Sequence[int]) -> int:
    data = (parent or 0).to_bytes(8, "big") + struct.pack(f"<{len(token_ids)}i", *token_ids)
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def block_hashes(token_ids: Sequence[int], block_size: int, limit: int | None = None) -> list[int]:
    """Chained hashes of the leading full blocks of ``token_ids`` (at most ``limit`` of them)."""
    n = len(token_ids) // block_size
    if limit is not None:
        n = min(n, limit)
    out: list[int] = []
    parent = None
    for i in range(n):
        parent = chain_hash(parent, token_ids[i * block_size:(i + 1) * block_size])
        out.append(parent)
    return out


def cacheable_blocks(prompt_len: int, block_size: int) -> int:
    """The most blocks of a prompt an engine can serve from cache: the last prompt token is
    always computed (it yields the first output), so a prompt of exactly k blocks hits k-1."""
    return max(0, (prompt_len - 1) // block_size)
