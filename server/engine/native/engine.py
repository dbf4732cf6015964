"""NativeEngine: the Engine protocol in front of LLMEngine, stepped by a worker thread.

The asyncio side never touches the model: it sends commands (add, abort, stop) through a
thread-safe queue, and the worker hands each Delta back with ``loop.call_soon_threadsafe``
into the request's own asyncio.Queue. The worker blocks on the command queue when idle.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..base import (Delta, EngineDeadError, EngineError, EngineStats, GenerateRequest,
                    InvalidRequestForEngine, ModelInfo, ProgressFn, ToolCallParser)
from .setup import build_engine

log = logging.getLogger(__name__)
_STOP = object()


class NativeEngine:
    name = "native"

    def __init__(self, settings: Any, model_dir: Path, model_id: str):
        self.settings = settings
        self.model_dir = Path(model_dir)
        self.model_id = model_id
        self.core = None
        self.tokenizer = None
        self._info: ModelInfo | None = None
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None
        self._dead: BaseException | None = None
        self._stats = EngineStats(max_num_seqs=settings.max_num_seqs)

    # -- lifecycle -------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise EngineError("engine not started")
        return self._info

    async def start(self, progress: ProgressFn | None = None) -> None:
        built = await asyncio.to_thread(build_engine, self.settings, self.model_dir, self.model_id, progress)
        self.core, self.tokenizer, self._info = built.core, built.tokenizer, built.info
        self._publish_stats()
        self._thread = threading.Thread(target=self._loop, name="native-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._thread is None:
            return
        self._cmds.put(_STOP)
        await asyncio.to_thread(self._thread.join, 30)
        self._thread = None
        for rid in list(self._streams):
            self._deliver(rid, Delta([], "", finish_reason="abort"))

    def is_healthy(self) -> bool:
        return self._dead is None and self._thread is not None and self._thread.is_alive()

    def stats(self) -> EngineStats:
        return self._stats

    @property
    def kv_events(self):
        """The KV event ring (None before start or with prefix caching off)."""
        return getattr(self.core, "kv_events", None)

    # -- requests --------------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if self._dead is not None:
            raise EngineDeadError(f"native engine is dead: {self._dead}")
        if self.core is None:
            raise EngineError("engine not started")
        self.core.validate(request)  # InvalidRequestForEngine before the first delta
        rid = request.request_id
        if rid in self._streams:
            raise InvalidRequestForEngine(f"duplicate request id {rid}")
        q: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = (asyncio.get_running_loop(), q)
        self._cmds.put(("add", request))
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(rid, None)
            if not finished:  # client went away: free its KV
                self._cmds.put(("abort", rid))

    async def abort(self, request_id: str) -> None:
        self._cmds.put(("abort", request_id))

    # -- worker thread ---------------------------------------------------------------
    def _deliver(self, rid: str, item: Delta | BaseException) -> None:
        target = self._streams.get(rid)
        if target is not None:
            loop, q = target
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the loop is closed; nobody is listening
                pass

    def _handle(self, cmd: Any) -> bool:
        if cmd is _STOP:
            return False
        kind, arg = cmd
        if kind == "add":
            try:
                self.core.add_request(arg)
            except Exception as e:  # noqa: BLE001 - reported to that request only
                self._deliver(arg.request_id, e if isinstance(e, InvalidRequestForEngine) else EngineError(str(e)))
        elif kind == "abort" and self.core.abort(arg):
            self._deliver(arg, Delta([], "", finish_reason="abort"))
        return True

    def _loop(self) -> None:
        try:
            while True:
                block = not self.core.has_work()
                try:
                    cmd = self._cmds.get(block=block)
                    if not self._handle(cmd):
                        return
                    while True:  # drain everything queued before stepping
                        if not self._handle(self._cmds.get_nowait()):
                            return
                except queue.Empty:
                    pass
                outputs = self.core.step() if self.core.has_work() else []
                self._publish_stats()  # before delivering: a client never sees older stats
                for rid, delta in outputs:
                    self._deliver(rid, delta)
        except BaseException as e:  # noqa: BLE001 - the engine is gone; tell everyone
            log.exception("native engine died")
            self._dead = e
            for rid in list(self._streams):
                self._deliver(rid, EngineDeadError(f"native engine died: {e}"))

    def _publish_stats(self) -> None:
        core = self.core
        sched, bm = core.scheduler, core.block_manager
        by_priority: dict[int, tuple[int, int]] = {}
        waiting_tokens = 0
        for s in list(sched.waiting):
            left = s.num_tokens - s.num_computed_tokens
            waiting_tokens += left
            n, toks = by_priority.get(s.priority, (0, 0))
            by_priority[s.priority] = (n + 1, toks + left)
        self._stats = EngineStats(
            num_running=len(sched.running), num_waiting=len(sched.waiting),
            waiting_prompt_tokens=waiting_tokens,
            kv_cache_usage=bm.usage, kv_total_tokens=bm.num_blocks * bm.block_size,
            max_num_seqs=core.config.max_num_seqs,
            max_num_batched_tokens=core.config.max_num_batched_tokens, steps=core.steps,
            waiting_by_priority=by_priority, block_size=bm.block_size, num_gpu_blocks=bm.num_blocks,
            prefix_caching=bm.enable_prefix_caching)

    # -- text ------------------------------------------------------------------------
    def tokenizer_spec(self) -> Any:
        """What ``GET /v1/tokenizer`` serves: ``tokenizer.json``, the chat template and the
        special tokens it refers to, so the router can tokenize as this node does."""
        from server.tokenspec import TokenizerSpec

        path = self.model_dir / "tokenizer.json"
        template = getattr(self.tokenizer, "chat_template", None)
        if not path.is_file() or not isinstance(template, str):
            return None  # a slow tokenizer or a template per name: the router estimates instead
        special = {k: v for k, v in getattr(self.tokenizer, "special_tokens_map", {}).items() if isinstance(v, str)}
        return TokenizerSpec("hf", tokenizer_json=path.read_text(), chat_template=template,
                             special_tokens=tuple(sorted(special.items())))

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    add_generation_prompt: bool = True) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)
        return self.tokenize(text, add_special_tokens=False)

    def detokenize(self, token_ids: list[int]) -> str:
        vocab = len(self.tokenizer)
        if any(t >= vocab for t in token_ids):  # the fast tokenizer would silently drop them
            raise ValueError(f"token ids must be below the vocabulary size {vocab}")
        return self.tokenizer.decode(token_ids)

    def tool_parser(self, name: str) -> ToolCallParser:
        from ..toolcalls import get_tool_parser

        return get_tool_parser(name)

