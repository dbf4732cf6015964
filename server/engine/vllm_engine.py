"""The production engine: vLLM's AsyncLLM in-process (its engine core runs in its own process).

vLLM does tokenization, chat templates (the model's own), incremental detokenization, stop
strings, structured outputs and tool-call parsing; this adapter only translates records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from server.config import NodeSettings
from server.engine.base import (
    Delta,
    EngineDeadError,
    EngineError,
    EngineStats,
    GenerateRequest,
    InvalidRequestForEngine,
    ModelInfo,
    PositionLogprobs,
    ProgressFn,
    SamplingOptions,
    TokenLogprob,
    ToolCall,
    ToolCallParser,
)

log = logging.getLogger("edgefleet.engine.vllm")


def _stat_logger_factory(stats: EngineStats):
    """A vLLM stat logger that copies scheduler stats into our EngineStats every step."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class EdgefleetStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0):
            cache = vllm_config.cache_config
            stats.kv_total_tokens = int((cache.num_gpu_blocks or 0) * cache.block_size)
            stats.block_size = int(cache.block_size or 0)
            stats.num_gpu_blocks = int(cache.num_gpu_blocks or 0)
            stats.prefix_caching = bool(cache.enable_prefix_caching)
            stats.max_num_seqs = vllm_config.scheduler_config.max_num_seqs
            stats.max_num_batched_tokens = vllm_config.scheduler_config.max_num_batched_tokens

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                stats.num_running = scheduler_stats.num_running_reqs
                stats.num_waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                stats.kv_cache_usage = min(1.0, max(0.0, float(scheduler_stats.kv_cache_usage)))
                stats.steps += 1

        def log_engine_initialized(self):
            pass

    return EdgefleetStatLogger


class VllmEngine:
    name = "vllm"

    def __init__(self, settings: NodeSettings, model_dir: Path | str, model_id: str, random_weights: bool = False,
                 source: str | None = None):
        self.settings = settings
        self.model_dir = str(model_dir)
        self.model_id = model_id
        self.random_weights = random_weights
        self.source = source  # "gguf:<file>" when model_dir was converted from it
        self._stats = EngineStats()
        # request id -> (prompt tokens, priority), until its first output: our view of the queue
        self._pending_prompt: dict[str, tuple[int, int]] = {}
        self._engine: Any = None
        self._tokenizer: Any = None
        self._info: ModelInfo | None = None
        self._dead = False

    # --- lifecycle ------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError("engine not started")
        return self._info

    def _engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform

        s = self.settings
        dtype = s.dtype
        if dtype == "auto" and self.random_weights:
            # Random-weight demo/test models are float32 on disk; keep them there. (vLLM's
            # "auto" downcasts to bf16 on CPUs that claim bf16 support, and some virtual
            # machines claim it without delivering it: the worker dies with SIGILL.)
            dtype = "float32"
        elif dtype == "auto" and self.source:  # converted from GGUF: the dtype chosen for it, kept
            import json
            dtype = json.loads((Path(self.model_dir) / "config.json").read_text()).get("torch_dtype", "auto")
        kwargs: dict[str, Any] = dict(
            model=self.model_dir, served_model_name=[self.model_id], dtype=dtype,
            quantization=s.quantization if s.quantization not in (None, "auto", "none") else None,
            max_model_len=s.max_model_len, enforce_eager=s.enforce_eager, max_num_seqs=s.max_num_seqs,
            disable_log_stats=False, trust_remote_code=False, seed=0,
            scheduling_policy="priority",  # the request's priority field (lower first); FCFS within a class
        )
        if current_platform.is_cpu():
            kwargs["kv_cache_memory_bytes"] = int((s.kv_cache_gb or 4.0) * (1 << 30))
        else:
            kwargs["gpu_memory_utilization"] = s.gpu_memory_utilization
            if s.kv_cache_gb:
                kwargs["kv_cache_memory_bytes"] = int(s.kv_cache_gb * (1 << 30))
        kwargs.update({k: v for k, v in s.engine_options.items()})
        return AsyncEngineArgs(**kwargs)

    async def start(self, progress: ProgressFn | None = None) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        say = progress or (lambda _msg: None)
        say(f"loading {self.model_id} with vLLM from {self.model_dir}")
        args = self._engine_args()
        # Construction blocks for tens of seconds (weights, KV allocation); keep the event
        # loop free so /health and /ready answer while the model loads.
        self._engine = await asyncio.to_thread(
            AsyncLLM.from_engine_args, args, stat_loggers=[_stat_logger_factory(self._stats)])
        self._tokenizer = self._engine.get_tokenizer()
        mc = self._engine.vllm_config.model_config
        self._info = ModelInfo(
            id=self.model_id, root=self.model_dir, max_model_len=int(mc.max_model_len),
            dtype=str(mc.dtype).removeprefix("torch."), quantization=mc.quantization,
            random_weights=self.random_weights, source=self.source, converted=self.source is not None,
            note=f"converted from {self.source} (dequantized; vLLM reads no GGUF)" if self.source else None)
        say(f"ready: max_model_len={mc.max_model_len} dtype={self._info.dtype} "
            f"kv_tokens={self._stats.kv_total_tokens}")

    async def stop(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.shutdown)
            self._engine = None

    def is_healthy(self) -> bool:
        return self._engine is not None and not self._dead and not self._engine.errored

    def stats(self) -> EngineStats:
        s = self._stats
        by_priority: dict[int, tuple[int, int]] = {}
        for tokens, prio in list(self._pending_prompt.values()):
            n, toks = by_priority.get(prio, (0, 0))
            by_priority[prio] = (n + 1, toks + tokens)
        s.waiting_prompt_tokens = sum(t for _, t in by_priority.values())
        s.waiting_by_priority = by_priority
        return s

    # --- text -----------------------------------------------------------------------
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    add_generation_prompt: bool = True) -> list[int]:
        out = self._tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    def detokenize(self, token_ids: list[int]) -> str:
        vocab = len(self._tokenizer)
        if any(t >= vocab for t in token_ids):  # the fast tokenizer would silently drop them
            raise ValueError(f"token ids must be below the vocabulary size {vocab}")
        return self._tokenizer.decode(token_ids)

    def tool_parser(self, name: str) -> ToolCallParser:
        from vllm.tool_parsers import ToolParserManager

        cls = ToolParserManager.get_tool_parser(name)
        return _VllmToolParser(cls, self._tokenizer, self.model_id)

    # --- generation -----------------------------------------------------------------
    def _sampling_params(self, o: SamplingOptions) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if o.json_schema is not None:
            structured = StructuredOutputsParams(json=o.json_schema)
        elif o.json_object:
            structured = StructuredOutputsParams(json_object=True)
        return SamplingParams(
            n=1, max_tokens=o.max_tokens, temperature=o.temperature, top_p=o.top_p, top_k=o.top_k,
            min_p=o.min_p, presence_penalty=o.presence_penalty, frequency_penalty=o.frequency_penalty,
            repetition_penalty=o.repetition_penalty, seed=o.seed, stop=o.stop or None,
            stop_token_ids=o.stop_token_ids or None, include_stop_str_in_output=o.include_stop_str_in_output,
            ignore_eos=o.ignore_eos, logprobs=o.logprobs, logit_bias=o.logit_bias,
            structured_outputs=structured, output_kind=RequestOutputKind.DELTA)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDead
        from vllm.v1.engine.exceptions import EngineGenerateError

        if not self.is_healthy():
            raise EngineDeadError("engine is not running")
        try:
            params = self._sampling_params(request.sampling)
        except (ValueError, TypeError) as exc:
            raise InvalidRequestForEngine(str(exc)) from None
        rid = request.request_id
        prompt_len = len(request.prompt_token_ids)
        self._pending_prompt[rid] = (prompt_len, request.priority)
        finished = False
        completion = 0
        try:
            stream = self._engine.generate({"prompt_token_ids": request.prompt_token_ids}, params, rid,
                                           priority=request.priority)
            async for out in stream:
                self._pending_prompt.pop(rid, None)
                o = out.outputs[0]
                completion += len(o.token_ids)
                finished = out.finished
                yield Delta(
                    token_ids=list(o.token_ids), text=o.text, logprobs=self._logprobs(o, request.sampling),
                    finish_reason=_finish(o.finish_reason) if out.finished else None,
                    stop_reason=o.stop_reason, prompt_tokens=prompt_len, completion_tokens=completion,
                    cached_tokens=out.num_cached_tokens or 0)
        except VllmDead as exc:
            self._dead = True
            raise EngineDeadError("engine died") from exc
        except EngineGenerateError as exc:
            raise EngineError("generation failed") from exc
        except (ValueError, VLLMClientError) as exc:  # input validation inside vLLM (e.g. a broken regex)
            raise InvalidRequestForEngine(_first_line(exc), param=_param_for(exc)) from None
        finally:
            self._pending_prompt.pop(rid, None)
            if not finished and self._engine is not None:
                await _shielded_abort(self._engine, rid)

    async def abort(self, request_id: str) -> None:
        self._pending_prompt.pop(request_id, None)
        if self._engine is not None:
            await self._engine.abort(request_id)

    def _logprobs(self, o: Any, sampling: SamplingOptions) -> list[PositionLogprobs] | None:
        if sampling.logprobs is None or not o.logprobs:
            return None
        out = []
        for token_id, entries in zip(o.token_ids, o.logprobs):
            def rec(tid: int, lp: Any) -> TokenLogprob:
                text = lp.decoded_token if lp.decoded_token is not None else self._tokenizer.decode([tid])
                return TokenLogprob(tid, text, float(lp.logprob))
            sampled = rec(token_id, entries[token_id])
            top = sorted(((tid, lp) for tid, lp in entries.items() if lp.rank is not None and lp.rank <= sampling.logprobs),
                         key=lambda kv: kv[1].rank)
            out.append(PositionLogprobs(sampled, [rec(t, lp) for t, lp in top][: sampling.logprobs]))
        return out


async def _shielded_abort(engine: Any, rid: str) -> None:
    try:
        await asyncio.shield(engine.abort(rid))
    except (asyncio.CancelledError, Exception):  # best effort: vLLM also aborts on generator close
        pass


def _finish(reason: str | None) -> Any:
    return {"stop": "stop", "length": "length", "abort": "abort"}.get(reason or "", "stop")


def _first_line(exc: BaseException) -> str:
    from server.edge.errors import sanitize

    return sanitize(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def _param_for(exc: BaseException) -> str | None:
    text = str(exc).lower()
    if "json" in text or "schema" in text or "grammar" in text or "regex" in text:
        return "response_format"
    return None


class _VllmToolParser:
    """Adapts a vLLM ToolParser class (which wants vLLM's request object) to our protocol."""

    def __init__(self, cls: Any, tokenizer: Any, model_id: str):
        self.cls, self.tokenizer, self.model_id = cls, tokenizer, model_id
        marker = getattr(cls, "tool_call_start_token", None)
        self.start_marker = marker if isinstance(marker, str) else None  # for streaming: hold back calls

    def extract(self, text: str, tools: list[dict[str, Any]] | None = None) -> tuple[str | None, list[ToolCall]]:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        req = ChatCompletionRequest(model=self.model_id, messages=[{"role": "user", "content": ""}],
                                    tools=tools or None)
        info = self.cls(self.tokenizer, req.tools).extract_tool_calls(text, req)
        if not info.tools_called:
            return text, []
        calls = [ToolCall(name=c.function.name, arguments=c.function.arguments, id=c.id) for c in info.tool_calls]
        return info.content or None, calls
