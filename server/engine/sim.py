"""SimEngine: an engine that models time instead of running a model (``--engine sim``).

It exists for routing experiments: a fleet of many heterogeneous nodes costs a few
coroutines each. Its text is placeholder and its latencies are modelled; it says so in
``ModelInfo.note`` and in ``name == "sim"``, from which the node sets
``identity.simulated`` in the capacity document.

The model is a continuous-batching scheduler in miniature::

    step duration = decode_ms + decode_ms_per_seq * running        (one token per running seq)
                  + sum(uncached prompt tokens admitted this step) / prefill_tokens_per_s

A request is admitted when a sequence slot is free and the KV pool holds its prompt plus
``max_tokens``; it gets its first token at the end of the step that prefilled it. The pool
(:mod:`server.engine.sim_kv`) keeps a block-hash prefix cache with LRU eviction, on by
default as in vLLM (``enable_prefix_caching=false`` turns it off): prompt tokens found there
are reported as ``cached_tokens`` and cost no prefill time. Waiting requests are admitted in
(priority, arrival) order, lower priority first, like vLLM's priority scheduler; the head of
that order waits for room rather than being overtaken. Room is reserved up front, so the sim
never preempts.
``network_delay_ms`` adds a one-way delay before the first token, so a node can look far
away (it is also exposed as ``response_delay_s`` for the HTTP layer to apply).

Options come from ``NodeSettings.engine_options`` (``--engine-option KEY=VALUE``); see
:data:`DEFAULTS`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.engine.base import (
    Delta,
    EngineDeadError,
    EngineStats,
    GenerateRequest,
    InvalidRequestForEngine,
    ModelInfo,
    ProgressFn,
    ToolCallParser,
)
from server.engine.kv_events import KvEventLog
from server.tokenspec import SimTokenizer, TokenizerSpec
from server.engine.sim_kv import Reservation, SimKvPool

DEFAULTS: dict[str, Any] = {
    "prefill_tokens_per_s": 4000.0,  # prompt tokens per second of prefill
    "decode_ms": 20.0,  # fixed cost of one decode step
    "decode_ms_per_seq": 0.5,  # extra step time per running sequence (batch-size effect)
    "kv_capacity_tokens": 65536,  # KV pool, in tokens
    "max_num_seqs": None,  # None: the node's --max-num-seqs
    "max_model_len": None,  # None: the node's --max-model-len, else 4096
    "placeholder": " tok",  # text of every generated token
    "network_delay_ms": 0.0,  # one-way delay added before the first token
    "load_s": 0.0,  # pretend model load time in start()
    "chars_per_token": 4,  # tokenize(): one token per this many characters
    "block_size": 16,  # KV block size in tokens (the prefix cache's unit)
    "enable_prefix_caching": True,  # vLLM's default; false: every prompt is prefilled in full
    "kv_events_ring": 4096,  # KV events kept for GET /v1/kv/events (0: no events)
}

VOCAB = 32000
SIM_NOTE = "simulated engine: latencies are modelled, text is placeholder"


@dataclass(slots=True)
class SimOptions:
    prefill_tokens_per_s: float
    decode_ms: float
    decode_ms_per_seq: float
    kv_capacity_tokens: int
    max_num_seqs: int
    max_model_len: int
    placeholder: str
    network_delay_ms: float
    load_s: float
    chars_per_token: int
    block_size: int
    enable_prefix_caching: bool
    kv_events_ring: int

    @classmethod
    def from_settings(cls, settings: Any) -> SimOptions:
        raw = dict(getattr(settings, "engine_options", {}) or {})
        unknown = set(raw) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown sim engine option(s): {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
        opts = {**DEFAULTS, **raw}
        if opts["max_num_seqs"] is None:
            opts["max_num_seqs"] = getattr(settings, "max_num_seqs", 32) or 32
        if opts["max_model_len"] is None:
            opts["max_model_len"] = getattr(settings, "max_model_len", None) or 4096
        out = cls(
            prefill_tokens_per_s=float(opts["prefill_tokens_per_s"]),
            decode_ms=float(opts["decode_ms"]),
            decode_ms_per_seq=float(opts["decode_ms_per_seq"]),
            kv_capacity_tokens=int(opts["kv_capacity_tokens"]),
            max_num_seqs=int(opts["max_num_seqs"]),
            max_model_len=int(opts["max_model_len"]),
            placeholder=str(opts["placeholder"]),
            network_delay_ms=float(opts["network_delay_ms"]),
            load_s=float(opts["load_s"]),
            chars_per_token=int(opts["chars_per_token"]),
            block_size=int(opts["block_size"]),
            enable_prefix_caching=_flag(opts["enable_prefix_caching"]),
            kv_events_ring=int(opts["kv_events_ring"]),
        )
        if out.prefill_tokens_per_s <= 0 or out.decode_ms < 0 or out.decode_ms_per_seq < 0:
            raise ValueError("sim engine: prefill_tokens_per_s must be > 0 and decode times >= 0")
        if out.kv_capacity_tokens <= 0 or out.max_num_seqs <= 0 or out.chars_per_token <= 0:
            raise ValueError("sim engine: kv_capacity_tokens, max_num_seqs and chars_per_token must be > 0")
        if out.block_size <= 0 or out.kv_capacity_tokens < out.block_size:
            raise ValueError("sim engine: block_size must be > 0 and at most kv_capacity_tokens")
        return out


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"sim engine: expected a boolean, got {value!r}")
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


@dataclass(slots=True)
class _Seq:
    request: GenerateRequest
    out: asyncio.Queue[Delta | BaseException]
    prompt_tokens: int
    max_tokens: int
    generated: int = 0
    finished: bool = False
    reservation: Reservation | None = None  # KV held while running
    not_before: float = 0.0  # loop time before which it may not be admitted (network delay)
    order: int = 0  # arrival order, the tie-break within a priority class
    cached_tokens: int = 0
    hashes: list[int] | None = None  # prompt block hashes, computed once on first admission try

    @property
    def key(self) -> tuple[int, int]:
        return (self.request.priority, self.order)


@dataclass(slots=True)
class _State:
    waiting: list[_Seq] = field(default_factory=list)
    running: list[_Seq] = field(default_factory=list)
    steps: int = 0
    arrivals: int = 0


class SimEngine:
    """Implements :class:`server.engine.base.Engine` with modelled time and placeholder text."""

    name = "sim"

    def __init__(self, settings: Any, model_id: str):
        self.opts = SimOptions.from_settings(settings)
        self.response_delay_s = self.opts.network_delay_ms / 1000.0
        self._info = ModelInfo(
            id=model_id,
            root=f"sim://{model_id}",
            max_model_len=self.opts.max_model_len,
            dtype="simulated",
            random_weights=True,  # text carries no meaning, like the random-weights demo model
            note=SIM_NOTE,
        )
        self._text = SimTokenizer(self.opts.chars_per_token)
        self.kv_events = KvEventLog(self.opts.kv_events_ring) if self.opts.kv_events_ring > 0 else None
        self.kv = self._new_pool()
        self._state = _State()
        self._seqs: dict[str, _Seq] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._healthy = False
        self._token_ids = [100 + (zlib.crc32(self.opts.placeholder.encode()) % (VOCAB - 100))]

    def _new_pool(self) -> SimKvPool:
        o = self.opts
        return SimKvPool(o.kv_capacity_tokens, o.block_size, o.enable_prefix_caching, self.kv_events)

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self, progress: ProgressFn | None = None) -> None:
        if progress:
            progress("starting simulated engine (no model is loaded)")
        if self.opts.load_s > 0:
            await asyncio.sleep(self.opts.load_s)
        self._task = asyncio.create_task(self._loop(), name="sim-engine")
        self._healthy = True

    async def stop(self) -> None:
        self._healthy = False
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for seq in list(self._seqs.values()):
            seq.out.put_nowait(Delta([], "", finish_reason="abort", prompt_tokens=seq.prompt_tokens,
                                     completion_tokens=seq.generated))
        self._seqs.clear()
        self._state = _State()
        self.kv = self._new_pool()
        if self.kv_events is not None:
            self.kv_events.cleared()

    # --- requests --------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if not self._healthy:
            raise EngineDeadError("simulated engine is not running")
        n_prompt = len(request.prompt_token_ids)
        if n_prompt == 0:
            raise InvalidRequestForEngine("prompt must not be empty", param="prompt")
        need = n_prompt + request.sampling.max_tokens
        if self.kv.blocks_needed(need) > self.kv.num_blocks:
            raise InvalidRequestForEngine(
                f"prompt plus max_tokens ({need}) exceeds the simulated KV capacity "
                f"({self.kv.num_blocks * self.kv.block_size} tokens)", param="max_tokens")
        if request.request_id in self._seqs:
            raise InvalidRequestForEngine("duplicate request id")
        loop = asyncio.get_running_loop()
        seq = _Seq(request, asyncio.Queue(), n_prompt, request.sampling.max_tokens,
                   not_before=loop.time() + self.response_delay_s, order=self._state.arrivals)
        self._state.arrivals += 1
        self._seqs[request.request_id] = seq
        self._state.waiting.append(seq)
        self._wake.set()
        try:
            while True:
                item = await seq.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self._drop(seq)  # cancelled, finished or failed: free slot and KV now

    async def abort(self, request_id: str) -> None:
        seq = self._seqs.get(request_id)
        if seq is not None:
            self._drop(seq)
            seq.out.put_nowait(Delta([], "", finish_reason="abort", prompt_tokens=seq.prompt_tokens,
                                     completion_tokens=seq.generated))

    def _drop(self, seq: _Seq) -> None:
        if seq.finished:
            return
        seq.finished = True
        self._seqs.pop(seq.request.request_id, None)
        st = self._state
        if seq in st.running:
            st.running.remove(seq)
        else:
            try:
                st.waiting.remove(seq)
            except ValueError:
                pass
        if seq.reservation is not None:
            self.kv.release(seq.reservation)
            seq.reservation = None

    # --- the scheduler ---------------------------------------------------------------

    def _admit(self, now: float) -> int:
        """Move waiting sequences into the batch in (priority, arrival) order; return prompt
        tokens to prefill (cached ones excluded). The best arrived request that does not fit
        stops admission: nothing overtakes it."""
        st, o = self._state, self.opts
        prefill = 0
        while len(st.running) < o.max_num_seqs:
            arrived = [s for s in st.waiting if s.not_before <= now]
            if not arrived:
                break
            seq = min(arrived, key=lambda s: s.key)
            if seq.hashes is None:
                seq.hashes = self.kv.prompt_hashes(seq.request.prompt_token_ids)
            res = self.kv.try_reserve(seq.request.prompt_token_ids, seq.prompt_tokens + seq.max_tokens,
                                      seq.hashes)
            if res is None:
                break
            st.waiting.remove(seq)
            seq.reservation = res
            seq.cached_tokens = res.cached_tokens
            st.running.append(seq)
            prefill += seq.prompt_tokens - res.cached_tokens
        return prefill

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        st, o = self._state, self.opts
        while True:
            if not st.running:
                if not st.waiting:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                delay = min(s.not_before for s in st.waiting) - loop.time()
                if delay > 0:  # the head of the queue is still "on the wire"
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                    except TimeoutError:
                        pass
                    continue
            start = loop.time()
            prefill = self._admit(start)
            batch = list(st.running)
            duration = (o.decode_ms + o.decode_ms_per_seq * len(batch)) / 1000.0 + prefill / o.prefill_tokens_per_s
            await asyncio.sleep(max(0.0, start + duration - loop.time()))
            st.steps += 1
            for seq in batch:
                if seq.finished:
                    continue
                seq.generated += 1
                done = seq.generated >= seq.max_tokens
                seq.out.put_nowait(Delta(
                    token_ids=list(self._token_ids), text=o.placeholder,
                    finish_reason="length" if done else None,
                    prompt_tokens=seq.prompt_tokens, completion_tokens=seq.generated,
                    cached_tokens=seq.cached_tokens))
                if done:
                    self._drop(seq)

    # --- load ------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        st, o = self._state, self.opts
        by_priority: dict[int, tuple[int, int]] = {}
        for s in st.waiting:
            n, toks = by_priority.get(s.request.priority, (0, 0))
            by_priority[s.request.priority] = (n + 1, toks + s.prompt_tokens)
        return EngineStats(
            num_running=len(st.running),
            num_waiting=len(st.waiting),
            waiting_prompt_tokens=sum(s.prompt_tokens for s in st.waiting),
            kv_cache_usage=self.kv.usage(),
            kv_total_tokens=self.kv.num_blocks * self.kv.block_size,
            max_num_seqs=o.max_num_seqs,
            max_num_batched_tokens=o.max_model_len,
            steps=st.steps,
            waiting_by_priority=by_priority,
            block_size=self.kv.block_size,
            num_gpu_blocks=self.kv.num_blocks,
            prefix_caching=self.kv.prefix_caching,
        )

    def is_healthy(self) -> bool:
        return self._healthy and (self._task is None or not self._task.done())

    # --- text ------------------------------------------------------------------------

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """One made-up token per ``chars_per_token`` characters (at least one for non-empty text)."""
        return self._text.tokenize(text, add_special_tokens)

    def detokenize(self, token_ids: list[int]) -> str:
        """Placeholder text that tokenizes back to as many tokens: one word of
        ``chars_per_token`` characters per id (ids below 100 are the framing tokens: none)."""
        cpt = self.opts.chars_per_token
        return "".join(chr(97 + t % 26) * cpt for t in token_ids if t >= 100)

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    add_generation_prompt: bool = True) -> list[int]:
        # ChatML-like framing: 4 tokens of overhead per message, plus the generation prompt.
        return self._text.render_chat(messages, tools, add_generation_prompt)

    def tokenizer_spec(self) -> TokenizerSpec:
        """What ``GET /v1/tokenizer`` serves: the router tokenizes as this node does."""
        return TokenizerSpec("sim", chars_per_token=self.opts.chars_per_token)

    def tool_parser(self, name: str) -> ToolCallParser:
        from server.engine.toolcalls import get_tool_parser

        return get_tool_parser(name)
