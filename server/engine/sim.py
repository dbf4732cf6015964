"""SimEngine: an engine that models time instead of running a model (``--engine sim``).

It exists for routing experiments: a fleet of many heterogeneous nodes costs a few
coroutines each. Its text is placeholder and its latencies are modelled; it says so in
``ModelInfo.note`` and in ``name == "sim"``, from which the node sets
``identity.simulated`` in the capacity document.

The model is a continuous-batching scheduler in miniature::

    step duration = decode_ms + decode_ms_per_seq * running        (one token per running seq)
                  + sum(prompt tokens admitted this step) / prefill_tokens_per_s

A request is admitted when a sequence slot is free and the KV pool holds its prompt plus
``max_tokens``; it gets its first token at the end of the step that prefilled it.
``network_delay_ms`` adds a one-way delay before the first token, so a node can look far
away (it is also exposed as ``response_delay_s`` for the HTTP layer to apply).

Options come from ``NodeSettings.engine_options`` (``--engine-option KEY=VALUE``); see
:data:`DEFAULTS`.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections import deque
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
        )
        if out.prefill_tokens_per_s <= 0 or out.decode_ms < 0 or out.decode_ms_per_seq < 0:
            raise ValueError("sim engine: prefill_tokens_per_s must be > 0 and decode times >= 0")
        if out.kv_capacity_tokens <= 0 or out.max_num_seqs <= 0 or out.chars_per_token <= 0:
            raise ValueError("sim engine: kv_capacity_tokens, max_num_seqs and chars_per_token must be > 0")
        return out


@dataclass(slots=True)
class _Seq:
    request: GenerateRequest
    out: asyncio.Queue[Delta | BaseException]
    prompt_tokens: int
    max_tokens: int
    generated: int = 0
    finished: bool = False
    reserved: int = 0  # KV tokens held
    not_before: float = 0.0  # loop time before which it may not be admitted (network delay)


@dataclass(slots=True)
class _State:
    waiting: deque[_Seq] = field(default_factory=deque)
    running: list[_Seq] = field(default_factory=list)
    kv_used: int = 0
    steps: int = 0


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
        self._state = _State()
        self._seqs: dict[str, _Seq] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._healthy = False
        self._token_ids = [100 + (zlib.crc32(self.opts.placeholder.encode()) % (VOCAB - 100))]

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

    # --- requests --------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if not self._healthy:
            raise EngineDeadError("simulated engine is not running")
        n_prompt = len(request.prompt_token_ids)
        if n_prompt == 0:
            raise InvalidRequestForEngine("prompt must not be empty", param="prompt")
        need = n_prompt + request.sampling.max_tokens
        if need > self.opts.kv_capacity_tokens:
            raise InvalidRequestForEngine(
                f"prompt plus max_tokens ({need}) exceeds the simulated KV capacity ({self.opts.kv_capacity_tokens})",
                param="max_tokens")
        if request.request_id in self._seqs:
            raise InvalidRequestForEngine("duplicate request id")
        loop = asyncio.get_running_loop()
        seq = _Seq(request, asyncio.Queue(), n_prompt, request.sampling.max_tokens,
                   not_before=loop.time() + self.response_delay_s)
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
        st.kv_used -= seq.reserved
        seq.reserved = 0

    # --- the scheduler ---------------------------------------------------------------

    def _admit(self, now: float) -> int:
        """Move waiting sequences into the batch (FCFS); return prompt tokens to prefill."""
        st, o = self._state, self.opts
        prefill = 0
        while st.waiting and len(st.running) < o.max_num_seqs:
            seq = st.waiting[0]
            if seq.not_before > now:
                break
            need = seq.prompt_tokens + seq.max_tokens
            if st.kv_used + need > o.kv_capacity_tokens:
                break
            st.waiting.popleft()
            seq.reserved = need
            st.kv_used += need
            st.running.append(seq)
            prefill += seq.prompt_tokens
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
                delay = st.waiting[0].not_before - loop.time()
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
                    prompt_tokens=seq.prompt_tokens, completion_tokens=seq.generated))
                if done:
                    self._drop(seq)

    # --- load ------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        st, o = self._state, self.opts
        return EngineStats(
            num_running=len(st.running),
            num_waiting=len(st.waiting),
            waiting_prompt_tokens=sum(s.prompt_tokens for s in st.waiting),
            kv_cache_usage=min(1.0, st.kv_used / o.kv_capacity_tokens),
            kv_total_tokens=o.kv_capacity_tokens,
            max_num_seqs=o.max_num_seqs,
            max_num_batched_tokens=o.max_model_len,
            steps=st.steps,
        )

    def is_healthy(self) -> bool:
        return self._healthy and (self._task is None or not self._task.done())

    # --- text ------------------------------------------------------------------------

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """One made-up token per ``chars_per_token`` characters (at least one for non-empty text)."""
        n = math.ceil(len(text) / self.opts.chars_per_token)
        cpt = self.opts.chars_per_token
        ids = [100 + zlib.crc32(text[i * cpt:(i + 1) * cpt].encode("utf-8", "replace")) % (VOCAB - 100)
               for i in range(n)]
        return ([1] if add_special_tokens else []) + ids

    def detokenize(self, token_ids: list[int]) -> str:
        """Placeholder text that tokenizes back to as many tokens: one word of
        ``chars_per_token`` characters per id (ids below 100 are the framing tokens: none)."""
        cpt = self.opts.chars_per_token
        return "".join(chr(97 + t % 26) * cpt for t in token_ids if t >= 100)

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    add_generation_prompt: bool = True) -> list[int]:
        # ChatML-like framing: 4 tokens of overhead per message, plus the generation prompt.
        ids: list[int] = [1]
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            ids += [2, 3, 4] + self.tokenize(f"{m.get('role', '')}\n{content or ''}", add_special_tokens=False) + [5]
        if tools:
            import json
            ids += self.tokenize(json.dumps(tools), add_special_tokens=False)
        return ids + [2, 6] if add_generation_prompt else ids

    def tool_parser(self, name: str) -> ToolCallParser:
        from server.engine.toolcalls import get_tool_parser

        return get_tool_parser(name)
