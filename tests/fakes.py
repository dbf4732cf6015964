"""A scripted Engine for unit tests of the HTTP layer (never a substitute for the e2e tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from server.engine.base import Delta, EngineError, EngineStats, GenerateRequest, ModelInfo
from server.engine.toolcalls import get_tool_parser


class ScriptedEngine:
    name = "fake"

    def __init__(self, *, fail_prompt: str | None = None, tokens: int = 5, step_s: float = 0.0,
                 texts: list[str] | None = None, max_num_seqs: int = 4):
        self.max_num_seqs = max_num_seqs  # what stats() reports: the runtime counts slots by it
        self.texts = texts  # scripted output, one piece per step (overrides tokens)
        self.fail_prompt = fail_prompt
        self.tokens = tokens
        self.step_s = step_s
        self.aborted: list[str] = []
        self.healthy = True  # a test sets False to play a dead engine
        self._info = ModelInfo(id="fake-model", root="/nowhere", max_model_len=256, dtype="float32")

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self, progress=None) -> None:
        pass

    async def stop(self) -> None:
        pass

    def is_healthy(self) -> bool:
        return self.healthy

    def stats(self) -> EngineStats:
        return EngineStats(max_num_seqs=self.max_num_seqs, kv_total_tokens=1000)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % 200 for c in text]

    def render_chat(self, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool = True) -> list[int]:
        return self.tokenize("".join(m["content"] for m in messages))

    def detokenize(self, token_ids: list[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    def tool_parser(self, name: str):
        return get_tool_parser(name)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        boom = self.fail_prompt is not None and request.prompt_token_ids == self.tokenize(self.fail_prompt)
        if self.texts is not None:
            for i, text in enumerate(self.texts):
                last = i == len(self.texts) - 1
                yield Delta(token_ids=[i], text=text, finish_reason="stop" if last else None,
                            prompt_tokens=len(request.prompt_token_ids), completion_tokens=i + 1)
            return
        for i in range(self.tokens):
            await asyncio.sleep(self.step_s)
            if boom and i == 1:
                raise EngineError("out of memory")
            last = i == self.tokens - 1
            yield Delta(token_ids=[i], text=f"t{i} ", finish_reason="length" if last else None,
                        prompt_tokens=len(request.prompt_token_ids), completion_tokens=i + 1)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
