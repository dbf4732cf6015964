"""The synchronous engine core: requests in, one Delta per request per step out.

A step is: schedule, run the model, sample, then postprocess (append tokens, detokenize,
check stop conditions, free finished sequences). Not thread-safe: the async front calls it
from one worker thread only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..base import (Delta, GenerateRequest, InvalidRequestForEngine, PositionLogprobs,
                    TokenLogprob)
from ..kv_events import KvEventLog
from .block_manager import BlockManager
from .detok import IncrementalDetokenizer
from .model_runner import ModelRunner
from .sampler import SampleResult, SamplingRow
from .scheduler import Scheduler, SchedulerConfig
from .sequence import Sequence


@dataclass(slots=True)
class EngineConfig:
    num_blocks: int
    block_size: int = 16
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True


@dataclass(slots=True)
class RequestState:
    seq: Sequence
    row: SamplingRow
    detok: IncrementalDetokenizer
    request: GenerateRequest


class LLMEngine:
    def __init__(self, runner: ModelRunner, tokenizer: Any, config: EngineConfig,
                 eos_token_ids: set[int]):
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.eos_token_ids = eos_token_ids
        self.kv_events = KvEventLog() if config.enable_prefix_caching else None
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching,
                                          self.kv_events)
        sched_cfg = SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                    config.max_model_len, config.enable_chunked_prefill)
        self.scheduler = Scheduler(sched_cfg, self.block_manager)
        self.requests: dict[str, RequestState] = {}
        self.steps = 0

    def validate(self, req: GenerateRequest) -> None:
        """Raise InvalidRequestForEngine for anything this engine cannot serve."""
        s = req.sampling
        if s.json_schema is not None or s.json_object:
            raise InvalidRequestForEngine("structured outputs (response_format json_schema/json_object) "
                                          "are not supported by the native engine", param="response_format")
        n = len(req.prompt_token_ids)
        if n == 0:
            raise InvalidRequestForEngine("the prompt is empty", param="prompt")
        if n + s.max_tokens > self.config.max_model_len:
            raise InvalidRequestForEngine(
                f"prompt ({n} tokens) plus max_tokens ({s.max_tokens}) exceeds the model's context "
                f"length ({self.config.max_model_len})", param="max_tokens", code="context_length_exceeded")
        vocab = self.runner.model.cfg.vocab_size
        if any(not 0 <= t < vocab for t in req.prompt_token_ids):
            raise InvalidRequestForEngine("prompt token id out of the vocabulary", param="prompt")
        if self.block_manager.blocks_needed(n + s.max_tokens) > self.config.num_blocks:
            raise InvalidRequestForEngine("request does not fit in the KV cache", param="max_tokens")

    def add_request(self, req: GenerateRequest) -> None:
        self.validate(req)
        if req.request_id in self.requests:
            raise InvalidRequestForEngine(f"duplicate request id {req.request_id}")
        s = req.sampling
        seq = Sequence(req.request_id, req.prompt_token_ids, s.max_tokens, priority=req.priority)
        row = SamplingRow.for_sequence(s, req.prompt_token_ids, self.runner.device)
        detok = IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids, s.stop,
                                       s.include_stop_str_in_output)
        self.requests[req.request_id] = RequestState(seq, row, detok, req)
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> bool:
        state = self.requests.pop(request_id, None)
        if state is None:
            return False
        self.scheduler.finish(state.seq)
        return True

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[tuple[str, Delta]]:
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        rows = {id(s): self.requests[s.seq_id].row for s in batch.seqs}
        results = self.runner.run(batch, rows)
        self.scheduler.advance(batch)
        self.steps += 1
        out = []
        for seq in batch.seqs:
            res = results.get(id(seq))
            if res is not None:
                out.append((seq.seq_id, self._postprocess(self.requests[seq.seq_id], res)))
        return out

    def _postprocess(self, state: RequestState, res: SampleResult) -> Delta:
        seq, s = state.seq, state.request.sampling
        seq.append_token(res.token_id)
        state.row.output_ids.append(res.token_id)
        finish, stop_reason = None, None
        is_stop_token = res.token_id in s.stop_token_ids
        if (res.token_id in self.eos_token_ids and not s.ignore_eos) or is_stop_token:
            finish, stop_reason = "stop", (res.token_id if is_stop_token else None)
        else:
            hit = state.detok.add(res.token_id)
            if hit is not None:
                finish, stop_reason = "stop", hit
        if finish is None and (seq.num_completion_tokens >= seq.max_tokens
                               or seq.num_tokens >= self.config.max_model_len):
            finish = "length"
        delta = Delta(token_ids=[res.token_id], text=state.detok.take(finish is not None),
                      logprobs=self._logprobs(res, s.logprobs), finish_reason=finish,
                      stop_reason=stop_reason, prompt_tokens=seq.num_prompt_tokens,
                      completion_tokens=seq.num_completion_tokens, cached_tokens=seq.num_cached_tokens)
        if finish is not None:
            self.scheduler.finish(seq)
            del self.requests[seq.seq_id]
        return delta

    def _logprobs(self, res: SampleResult, k: int | None) -> list[PositionLogprobs] | None:
        if k is None or res.logprob is None:
            return None
        tok = self.tokenizer.decode

        def lp(t: int, v: float) -> TokenLogprob:
            return TokenLogprob(t, tok([t]), v)

        return [PositionLogprobs(lp(res.token_id, res.logprob), [lp(t, v) for t, v in res.top or []])]
