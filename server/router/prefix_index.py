"""The router's estimate of which prompt prefixes each node holds in its prefix cache.

Estimate mode (this module): the router remembers what it routed where. A request is
canonicalised the way the chat template sees it (model, tools, then each message in order:
role, name, content, tool calls, tool call id), cut into fixed blocks and chain-hashed::

    text  = canonical(request)
    block = text[i*BLOCK_CHARS : (i+1)*BLOCK_CHARS]      full blocks only, as engines cache
    h[i]  = blake2b(h[i-1] || block, 8 bytes)           h[-1] = b""

so ``h[i]`` names the whole prefix up to block ``i`` (one changed byte early changes every
later hash). ``BLOCK_CHARS = 256`` approximates 64 tokens at ~4 characters per token; the
router never tokenizes, so the block boundaries are not the engine's. What matters is only
that equal prefixes give equal hashes and that the count of matching blocks times
``BLOCK_TOKENS`` approximates the cached token count: the node's reported
``cached_tokens`` corrects it (:meth:`PrefixIndex.correct`).

Per node an LRU-ordered map ``hash -> last used``. Bounded: at most the node's KV capacity
(``kv_total_tokens / BLOCK_TOKENS`` blocks, the most its cache can hold), at most
``max_blocks_per_node``, and at most ``max_blocks_total`` over all nodes (the least
recently used node's oldest blocks go first). A node that restarts or goes down is
forgotten (:meth:`forget`); a restart that the router does not see is caught by the next
``cached_tokens`` report, which trims what the node no longer holds.

Sessions: the index keeps ``session -> (node, last chain)``; the session's last node is
credited with the prefix its last request shares with this one even if the block map has
lost it (a strong hint, corrected by reports like everything else).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

BLOCK_TOKENS = 64
CHARS_PER_TOKEN = 4
BLOCK_CHARS = BLOCK_TOKENS * CHARS_PER_TOKEN
MAX_BLOCKS_PER_NODE = 1 << 18  # 262k blocks ~ 16.8M tokens; ~100 bytes each in CPython
MAX_BLOCKS_TOTAL = 1 << 20
MAX_SESSIONS = 100_000

_SEP = "\x1e"  # record separator: cannot be confused with a field boundary inside JSON


def _msg_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(getattr(p, "text", None) or (p.get("text", "") if isinstance(p, dict) else "") for p in content)


def canonical_chat(model: str, messages: list[Any], tools: list[Any] | None = None) -> str:
    """The text the chat template would see, in its order. ``messages`` and ``tools`` may be
    the pydantic request objects or plain dicts (the benchmark, ``/v1/fleet/pick``)."""
    parts = [model]
    if tools:
        parts.append(json.dumps([t.model_dump(mode="json", exclude_none=True) if hasattr(t, "model_dump") else t
                                 for t in tools], sort_keys=True, separators=(",", ":")))
    for m in messages:
        get = m.get if isinstance(m, dict) else lambda k, _m=m: getattr(_m, k, None)
        calls = get("tool_calls")
        if calls:
            calls = json.dumps([c.model_dump(mode="json") if hasattr(c, "model_dump") else c for c in calls],
                               sort_keys=True, separators=(",", ":"))
        parts.append(f"<{get('role')}|{get('name') or ''}|{get('tool_call_id') or ''}>{_msg_text(get('content'))}"
                     f"{calls or ''}")
    return _SEP.join(parts)


def canonical_completion(model: str, prompt: Any) -> str:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        # Token ids: 4 "characters" per id keeps a block near BLOCK_TOKENS ids.
        return model + _SEP + "".join(f"{t & 0xFFFFFFFF:08x}"[:4] for t in prompt)
    if isinstance(prompt, list):
        prompt = "".join(prompt)
    return model + _SEP + (prompt or "")


def block_hashes(text: str, block_chars: int = BLOCK_CHARS) -> list[int]:
    """Chained hashes of the full blocks of ``text`` (a trailing partial block is not cached
    by an engine either)."""
    out: list[int] = []
    parent = b""
    for i in range(0, len(text) - block_chars + 1, block_chars):
        parent = blake2b(parent + text[i:i + block_chars].encode("utf-8", "surrogatepass"), digest_size=8).digest()
        out.append(int.from_bytes(parent, "little"))
    return out


def session_hash(key: str) -> str:
    """What logs and views show instead of the key itself."""
    return blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass(slots=True)
class _NodeBlocks:
    blocks: OrderedDict[int, float] = field(default_factory=OrderedDict)  # oldest first
    limit: int = MAX_BLOCKS_PER_NODE
    last_used: float = 0.0


@dataclass(slots=True)
class IndexStats:
    """Predicted versus reported cached tokens, for the router's metrics."""

    predicted_tokens: int = 0  # on requests whose node reported cached_tokens
    reported_tokens: int = 0
    reports: int = 0
    trims: int = 0


class PrefixIndex:
    def __init__(self, block_tokens: int = BLOCK_TOKENS, max_blocks_per_node: int = MAX_BLOCKS_PER_NODE,
                 max_blocks_total: int = MAX_BLOCKS_TOTAL, max_sessions: int = MAX_SESSIONS):
        self.block_tokens = block_tokens
        self.max_blocks_per_node = max_blocks_per_node
        self.max_blocks_total = max_blocks_total
        self.max_sessions = max_sessions
        self._nodes: dict[str, _NodeBlocks] = {}
        self._total = 0
        self._sessions: OrderedDict[str, tuple[str, list[int]]] = OrderedDict()
        self.stats = IndexStats()

    # --- capacity ----------------------------------------------------------------------

    def set_capacity(self, node: str, kv_total_tokens: int) -> None:
        """The most blocks ``node`` can hold, from its capacity document; evicts beyond it."""
        nb = self._node(node)
        cap = kv_total_tokens // self.block_tokens if kv_total_tokens > 0 else self.max_blocks_per_node
        nb.limit = max(1, min(self.max_blocks_per_node, cap))
        self._evict(nb)

    def _node(self, node: str) -> _NodeBlocks:
        nb = self._nodes.get(node)
        if nb is None:
            nb = self._nodes[node] = _NodeBlocks(limit=self.max_blocks_per_node)
        return nb

    def blocks(self, node: str) -> int:
        nb = self._nodes.get(node)
        return len(nb.blocks) if nb else 0

    @property
    def total_blocks(self) -> int:
        return self._total

    # --- the four operations -----------------------------------------------------------

    def match(self, node: str, hashes: list[int], session: str | None = None) -> int:
        """How many leading blocks of ``hashes`` ``node`` is believed to hold."""
        n = 0
        nb = self._nodes.get(node)
        if nb is not None:
            blocks = nb.blocks
            for h in hashes:
                if h not in blocks:
                    break
                n += 1
        if session is not None and n < len(hashes):
            last = self._sessions.get(session)
            if last is not None and last[0] == node:
                n = max(n, _common_prefix(last[1], hashes))
        return n

    def insert(self, node: str, hashes: list[int], session: str | None = None, now: float | None = None) -> None:
        """``node`` now holds this prefix (it was routed there and answered)."""
        now = time.monotonic() if now is None else now
        nb = self._node(node)
        nb.last_used = now
        blocks = nb.blocks
        # Leaf first, so a chain's parents are the more recent: LRU then drops the tails of
        # old chains before the shared prefixes (as vLLM frees a request's blocks in reverse).
        for h in reversed(hashes):
            if h in blocks:
                blocks.move_to_end(h)
            else:
                self._total += 1
            blocks[h] = now
        self._evict(nb)
        if session is not None:
            self._sessions[session] = (node, hashes)
            self._sessions.move_to_end(session)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)

    def forget(self, node: str) -> None:
        """The node's cache is cold (down, restarted, removed)."""
        nb = self._nodes.pop(node, None)
        if nb is not None:
            self._total -= len(nb.blocks)
        for s in [s for s, (n, _) in self._sessions.items() if n == node]:
            del self._sessions[s]

    def correct(self, node: str, hashes: list[int], reported_cached_tokens: int, predicted_blocks: int,
                session: str | None = None) -> None:
        """The node says it had ``reported_cached_tokens`` of this prompt cached. Where that is
        fewer blocks than predicted, it no longer holds the blocks beyond: drop them (they
        are chained, so everything that extends them is gone too, as far as this request
        can tell)."""
        st = self.stats
        st.reports += 1
        st.predicted_tokens += predicted_blocks * self.block_tokens
        st.reported_tokens += reported_cached_tokens
        held = reported_cached_tokens // self.block_tokens
        if held >= predicted_blocks:
            return
        nb = self._nodes.get(node)
        if nb is None:
            return
        # The engine's blocks do not line up with ours; keep what the report covers, rounded down.
        for h in hashes[held:predicted_blocks]:
            if nb.blocks.pop(h, None) is not None:
                self._total -= 1
                st.trims += 1
        # This request's session only: scanning every session would cost per request on a
        # node that never caches; other sessions are corrected by their own reports.
        last = self._sessions.get(session) if session is not None else None
        if last is not None and last[0] == node:
            self._sessions[session] = (node, last[1][:held])

    # --- bounds ------------------------------------------------------------------------

    def _evict(self, nb: _NodeBlocks) -> None:
        blocks = nb.blocks
        while len(blocks) > nb.limit:
            blocks.popitem(last=False)
            self._total -= 1
        while self._total > self.max_blocks_total:
            victim = min((x for x in self._nodes.values() if x.blocks), key=lambda x: x.last_used)
            victim.blocks.popitem(last=False)
            self._total -= 1


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
