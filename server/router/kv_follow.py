"""Precise prefix mode: the router knows exactly which KV blocks a node holds.

A node whose capacity document says ``cache.kv_events: true`` (the sim and native engines)
publishes ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared`` at ``GET /v1/kv/events``
and its tokenizer at ``GET /v1/tokenizer``. For such a node the router

1. follows the events after every capacity poll (and right after a request it sent there
   completes), keeping the node's exact set of block hashes (:class:`NodeKv`);
2. fetches the tokenizer once per (node, model) and tokenizes each request as the node
   will (server/tokenspec.py: the same chat message conversion and template rendering);
3. predicts ``cached tokens = leading request blocks in the node's set x block_size``
   (at most ``(prompt_len - 1) // block_size`` blocks: the last prompt token is always
   computed), with the hash the node uses (server/kvhash.py).

This is what llm-d's ``precise-prefix-cache-scorer`` does. Each node falls back to the
estimate index (server/router/prefix_index.py) when it offers no events, its tokenizer
cannot be had or fails on a request, or its event stream is stale (no good read for
``stale_s``). Memory per node is bounded by ``max_blocks`` (a node holding more is
treated as estimate-mode until its set shrinks under the bound after a resync).

Resync: a 410 (``since`` fell off the node's ring) or an ``AllBlocksCleared`` drops the set;
after a 410 the follower restarts at the oldest event the node kept, so for a while it
may miss blocks stored before that (it under-predicts, never invents a hit). A node whose
``next`` goes backwards has restarted: the set is dropped and read again from 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from server.kvhash import block_hashes, cacheable_blocks
from server.router.registry import Node
from server.router.upstream import UpstreamIOError, UpstreamPool
from server.tokenspec import MAX_SPEC_BYTES, TextTokenizer, TokenizerSpec, build_tokenizer, chat_messages

log = logging.getLogger("edgefleet.router.kv")

EVENTS_PAGE = 2000
MAX_PAGES = 8  # per follow: a node far behind catches up over a few rounds
EVENTS_MAX_BYTES = 16 << 20
MAX_BLOCKS_PER_NODE = 1 << 20  # ~100 MiB of Python ints at most; a real node holds fewer
TOKENIZER_RETRY_S = 60.0
THREAD_ABOVE_CHARS = 8192  # tokenize longer prompts off the event loop
_OLDEST = re.compile(r"resync from (\d+)")


@dataclass(slots=True)
class NodeKv:
    """The exact set of block hashes one node holds, as its events say."""

    blocks: set[int] = field(default_factory=set)
    block_size: int = 0
    next_seq: int = 0
    synced_at: float | None = None  # monotonic time of the last good read
    resyncs: int = 0
    overflow: bool = False
    error: str | None = None

    def reset(self) -> None:
        self.blocks.clear()
        self.overflow = False
        self.resyncs += 1

    def apply(self, events: list[Any], max_blocks: int) -> None:
        for e in events:
            if not isinstance(e, dict):
                continue
            kind = e.get("type")
            if kind == "BlockStored":
                bs = e.get("block_size")
                if type(bs) is int and bs > 0:
                    self.block_size = bs
                self.blocks.update(h for h in e.get("block_hashes") or () if type(h) is int)
            elif kind == "BlockRemoved":
                self.blocks.difference_update(e.get("block_hashes") or ())
            elif kind == "AllBlocksCleared":
                self.reset()
        if len(self.blocks) > max_blocks:
            self.blocks.clear()  # cannot follow it exactly within the bound: estimate instead
            self.overflow = True


class KvFollower:
    def __init__(self, pool: UpstreamPool | None = None, stale_s: float = 5.0, timeout: float = 2.0,
                 max_blocks: int = MAX_BLOCKS_PER_NODE):
        self.pool = pool
        self.stale_s = stale_s
        self.timeout = timeout
        self.max_blocks = max_blocks
        self.nodes: dict[str, NodeKv] = {}
        self._specs: dict[tuple[str, str], str] = {}  # (node url, model) -> spec digest
        self._failed: dict[tuple[str, str], float] = {}  # (node url, model) -> when
        self._tokenizers: dict[str, TextTokenizer] = {}  # spec digest -> compiled (shared by nodes)
        self._inflight: dict[str, asyncio.Task[None]] = {}

    # --- which nodes ------------------------------------------------------------------

    @staticmethod
    def offers_events(node: Node) -> bool:
        cache = getattr(node.capacity, "cache", None) if node.capacity is not None else None
        return bool(cache is not None and cache.kv_events and cache.prefix_caching)

    def state(self, node: Node, now: float | None = None) -> NodeKv | None:
        """The node's block set if it is usable now (fresh, complete, within bounds)."""
        kv = self.nodes.get(node.url)
        if kv is None or kv.synced_at is None or kv.overflow or kv.block_size <= 0:
            return None
        now = time.monotonic() if now is None else now
        return kv if now - kv.synced_at <= self.stale_s else None

    def mode(self, node: Node) -> str:
        return "precise" if self.offers_events(node) and self.state(node) is not None else "estimate"

    def forget(self, url: str) -> None:
        self.nodes.pop(url, None)
        for key in [k for k in self._specs if k[0] == url]:
            del self._specs[key]

    # --- following events -------------------------------------------------------------

    async def follow_all(self, nodes: list[Node]) -> None:
        wanted = [n for n in nodes if self.offers_events(n) and n.breaker.state != "open"]
        for url in set(self.nodes) - {n.url for n in wanted}:
            self.nodes.pop(url, None)
        if wanted:
            await asyncio.gather(*(self.follow(n) for n in wanted))

    def kick(self, node: Node) -> None:
        """Read the node's events now (a request just finished there), unless a read is running."""
        if self.pool is None or not self.offers_events(node):
            return
        task = self._inflight.get(node.url)
        if task is None or task.done():
            self._inflight[node.url] = asyncio.ensure_future(self.follow(node))

    async def follow(self, node: Node) -> None:
        for model in node.capacity.models if node.capacity is not None else []:
            await self.tokenizer(node, model.id)  # cached after the first answer; off the request path
        kv = self.nodes.setdefault(node.url, NodeKv())
        cache = getattr(node.capacity, "cache", None)
        if cache is not None and cache.block_size > 0:
            kv.block_size = cache.block_size  # events repeat it; an idle node has sent none yet
        try:
            for _ in range(MAX_PAGES):
                status, body = await self._get(node, f"/v1/kv/events?since={kv.next_seq}&limit={EVENTS_PAGE}",
                                               EVENTS_MAX_BYTES)
                if status == 410:
                    m = _OLDEST.search(body.decode("utf-8", "replace"))
                    kv.reset()
                    kv.next_seq = int(m.group(1)) if m else 0
                    if not m:
                        raise RuntimeError("kv events: 410 without a resync point")
                    continue
                if status != 200:
                    raise RuntimeError(f"kv events answered HTTP {status}")
                doc = json.loads(body)
                events, nxt = doc.get("events"), doc.get("next")
                if not isinstance(events, list) or type(nxt) is not int or nxt < 0:
                    raise ValueError("kv events: malformed page")
                if nxt < kv.next_seq:  # the node restarted: its sequence began again
                    kv.reset()
                    kv.next_seq = 0
                    continue
                kv.apply(events, self.max_blocks)
                kv.next_seq = nxt
                if len(events) < EVENTS_PAGE:
                    break
            kv.synced_at = time.monotonic()
            kv.error = None
        except (UpstreamIOError, TimeoutError, RuntimeError, ValueError) as exc:
            kv.error = str(exc)[:200] or type(exc).__name__
            log.debug("kv events of %s: %s", node.name, kv.error)

    async def _get(self, node: Node, path: str, max_body: int) -> tuple[int, bytes]:
        assert self.pool is not None
        async with asyncio.timeout(self.timeout):
            resp = await self.pool.request(node.url, path, b"", node.auth_headers, method="GET",
                                           connect_timeout=self.timeout, head_timeout=None, max_body=max_body)
            try:
                return resp.status, await resp.read()
            finally:
                resp.release()

    # --- tokenizers -------------------------------------------------------------------

    def ready_tokenizer(self, node: Node, model: str) -> TextTokenizer | None:
        """The node's tokenizer if already fetched: the request path never waits on a node for
        it (a hung node would hold every request); :meth:`follow` fetches it in the background."""
        digest = self._specs.get((node.url, model))
        return None if digest is None else self._tokenizers.get(digest)

    async def tokenizer(self, node: Node, model: str) -> TextTokenizer | None:
        key = (node.url, model)
        digest = self._specs.get(key)
        if digest is not None:
            return self._tokenizers.get(digest)
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed < TOKENIZER_RETRY_S:
            return None
        try:
            status, body = await self._get(node, "/v1/tokenizer", MAX_SPEC_BYTES)
            if status != 200:
                raise RuntimeError(f"tokenizer answered HTTP {status}")
            doc = json.loads(body)
            if doc.get("model") != model:
                raise ValueError("tokenizer is for another model")
            spec = TokenizerSpec.from_json(doc)
            digest = spec.digest()
            if digest not in self._tokenizers:
                self._tokenizers[digest] = await asyncio.to_thread(build_tokenizer, spec)
        except Exception as exc:  # any failure here only means: estimate mode for this node
            self._failed[key] = time.monotonic()
            log.info("node %s: no tokenizer for precise prefix mode (%s); estimating", node.name, str(exc)[:200])
            return None
        self._specs[key] = digest
        self._failed.pop(key, None)
        return self._tokenizers[digest]

    # --- prediction -------------------------------------------------------------------

    async def predict(self, nodes: list[Node], req: Any) -> tuple[dict[str, int], int | None]:
        """(node url -> exactly predicted cached tokens, prompt length in tokens) for the nodes
        in precise mode; nodes missing from the map use the estimate."""
        now = time.monotonic()
        live = [(n, kv) for n in nodes if self.offers_events(n) and (kv := self.state(n, now)) is not None
                and n.serves(req.model)]
        if not live:
            return {}, None
        ids_by_digest: dict[str, list[int] | None] = {}
        out: dict[str, int] = {}
        prompt_len: int | None = None
        for node, kv in live:
            tok = self.ready_tokenizer(node, req.model)
            if tok is None:
                continue
            digest = self._specs[(node.url, req.model)]
            if digest not in ids_by_digest:
                ids_by_digest[digest] = await _prompt_ids(tok, req)
            ids = ids_by_digest[digest]
            if ids is None:
                continue
            prompt_len = max(prompt_len or 0, len(ids))
            hashes = block_hashes(ids, kv.block_size, cacheable_blocks(len(ids), kv.block_size))
            n = 0
            for h in hashes:
                if h not in kv.blocks:
                    break
                n += 1
            out[node.url] = n * kv.block_size
        return out, prompt_len


async def _prompt_ids(tok: TextTokenizer, req: Any) -> list[int] | None:
    """The prompt's token ids as the node computes them, or None (then: estimate)."""
    try:
        if hasattr(req, "messages"):
            messages = chat_messages(req.messages)
            tools = None
            if req.tools and getattr(req, "tool_choice", None) != "none":
                tools = [t.model_dump(exclude_none=True) for t in req.tools]
            size = sum(len(m["content"]) for m in messages)
            fn: Any = tok.render_chat
            args: tuple[Any, ...] = (messages, tools)
        else:
            prompt = req.prompt
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
                return list(prompt)
            if not isinstance(prompt, str):
                return None  # several prompts: several sequences, no single prediction
            size, fn, args = len(prompt), tok.tokenize, (prompt,)
        return await asyncio.to_thread(fn, *args) if size > THREAD_ABOVE_CHARS else fn(*args)
    except Exception as exc:  # a template the copy cannot render: estimate, never fail the request
        log.debug("precise tokenization failed: %s", str(exc)[:200])
        return None
