"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from server.api.deps import get_ready_runtime, require_json
from server.api.generation import (
    Generation,
    check_model_and_n,
    new_id,
    off_loop,
    resolve_max_tokens,
    resolve_priority,
    start_stream,
    until_disconnect,
)
from server.api.host_routes import model_runtime
from server.api.sse import event, sse_response
from server.edge.errors import ClientGone, InvalidRequest
from server.edge.protocol import CompletionRequest, Usage, clamp_logprob
from server.engine.base import Delta, PositionLogprobs
from server.runtime import NodeRuntime

router = APIRouter()


def _prompt_ids(runtime: NodeRuntime, req: CompletionRequest) -> tuple[list[int], str | None]:
    p = req.prompt
    if isinstance(p, list) and p and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, str):
        if not p:
            raise InvalidRequest("prompt must not be empty.", param="prompt")
        return runtime.engine.tokenize(p), p
    if any(t < 0 for t in p):  # type: ignore[union-attr]
        raise InvalidRequest("prompt token ids must be non-negative.", param="prompt")
    return list(p), None  # type: ignore[arg-type]


class _Logprobs:
    """The legacy completions logprobs layout, accumulated per choice."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.text_offset: list[int] = []

    def add(self, items: list[PositionLogprobs] | None, offset: int) -> None:
        for p in items or []:
            self.text_offset.append(offset)
            offset += len(p.sampled.token)
            self.tokens.append(p.sampled.token)
            self.token_logprobs.append(clamp_logprob(p.sampled.logprob))
            self.top_logprobs.append({t.token: clamp_logprob(t.logprob) for t in p.top})

    def json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset}


@router.post("/v1/completions", dependencies=[Depends(require_json)])
async def create_completion(body: CompletionRequest, request: Request,
                            runtime: Annotated[NodeRuntime, Depends(get_ready_runtime)]) -> Response:
    # multi-model nodes: load on demand; held loaded until the request is admitted
    priority = resolve_priority(request, body.priority)
    async with model_runtime(request, runtime, body.model, priority, body.keep_alive) as runtime:
        check_model_and_n(runtime, body.model, body.n)
        prompt, prompt_text = await off_loop(request, _prompt_ids, runtime, body)
        if not prompt:
            raise InvalidRequest("prompt must not be empty.", param="prompt")
        max_tokens = resolve_max_tokens(runtime, len(prompt), body.max_tokens)
        sampling = body.to_sampling(max_tokens)
        rid = new_id("cmpl", request)
        gen = Generation(runtime, rid, prompt, sampling, body.n, priority)
    echo = (prompt_text or "") if body.echo else ""
    headers = {"X-Request-Id": rid}
    if body.stream:
        stream = await start_stream(request, gen)
        if stream is None:
            return Response(status_code=499)
        return sse_response(_events(gen, body, stream, echo), headers=headers)
    try:
        result = await until_disconnect(request, _collect(gen, body, echo))
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(result, headers=headers)


async def _collect(gen: Generation, req: CompletionRequest, echo: str) -> dict[str, Any]:
    texts = [echo] * gen.n
    lps = [_Logprobs() for _ in range(gen.n)]
    finish: list[str | None] = [None] * gen.n
    completion = 0
    async for i, d in gen.stream():
        lps[i].add(d.logprobs, len(texts[i]))
        texts[i] += d.text
        completion += len(d.token_ids)
        if d.finish_reason:
            finish[i] = d.finish_reason
    choices = [{"index": i, "text": texts[i], "logprobs": lps[i].json() if req.logprobs is not None else None,
                "finish_reason": finish[i]} for i in range(gen.n)]
    n_prompt = len(gen.prompt_ids)
    return {"id": gen.request_id, "object": "text_completion", "created": int(time.time()), "model": req.model,
            "choices": choices,
            "usage": Usage.of(n_prompt, completion, gen.cached_tokens).wire()}


async def _events(gen: Generation, req: CompletionRequest, stream: AsyncIterator[tuple[int, Delta]],
                  echo: str) -> AsyncIterator[bytes]:
    base = {"id": gen.request_id, "object": "text_completion", "created": int(time.time()), "model": req.model}
    echoed = [False] * gen.n
    offsets = [len(echo)] * gen.n
    completion = 0

    async for i, d in stream:
        completion += len(d.token_ids)
        text = d.text
        if echo and not echoed[i]:
            text, echoed[i] = echo + text, True
        choice: dict[str, Any] = {"index": i, "text": text, "logprobs": None, "finish_reason": d.finish_reason}
        if req.logprobs is not None and d.logprobs:
            lp = _Logprobs()
            lp.add(d.logprobs, offsets[i])
            choice["logprobs"] = lp.json()
        offsets[i] += len(d.text)
        yield event({**base, "choices": [choice]})
    if req.include_usage():
        yield event({**base, "choices": [], "usage": Usage.of(len(gen.prompt_ids), completion,
                                                              gen.cached_tokens).wire()})
