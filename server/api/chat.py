"""POST /v1/chat/completions: route, prompt rendering, tool calls, streaming and not."""

from __future__ import annotations

import json
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
from server.api.toolstream import ToolCallGate
from server.edge.errors import ClientGone, InvalidRequest
from server.edge.protocol import ChatCompletionRequest, ToolMode, Usage, clamp_logprob
from server.engine.base import Delta, PositionLogprobs, ToolCall
from server.engine.toolcalls import new_call_id
from server.runtime import NodeRuntime
from server.tokenspec import chat_messages

router = APIRouter()


def _forced_schema(req: ChatCompletionRequest, mode: ToolMode) -> dict[str, Any] | None:
    """Forced tool use is constrained decoding: the output is the call, as JSON."""
    tools = req.tools or []
    if mode is ToolMode.NAMED:
        name = req.tool_choice.function.name  # type: ignore[union-attr]
        fn = next(t.function for t in tools if t.function.name == name)
        return fn.parameters or {"type": "object"}
    if mode is ToolMode.REQUIRED:
        return {"type": "array", "minItems": 1, "items": {"anyOf": [
            {"type": "object", "properties": {"name": {"type": "string", "enum": [t.function.name]},
                                              "parameters": t.function.parameters or {"type": "object"}},
             "required": ["name", "parameters"]} for t in tools]}}
    return None


def _messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    return chat_messages(req.messages)  # the router tokenizes with the same conversion


def _render(runtime: NodeRuntime, req: ChatCompletionRequest, mode: ToolMode) -> list[int]:
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools and mode is not ToolMode.NONE else None
    try:
        return runtime.engine.render_chat(_messages(req), tools)
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidRequest(f"The chat template rejected these messages: {str(exc)[:200]}", param="messages")
    except Exception as exc:  # jinja2 TemplateError and friends
        if type(exc).__module__.startswith("jinja2"):
            raise InvalidRequest(f"The chat template rejected these messages: {str(exc)[:200]}", param="messages")
        raise


def _parse_forced(text: str, mode: ToolMode, req: ChatCompletionRequest) -> list[ToolCall]:
    try:
        obj = json.loads(text, strict=False)  # grammars allow control characters inside strings
    except ValueError:
        return []
    if mode is ToolMode.NAMED:
        return [ToolCall(req.tool_choice.function.name, json.dumps(obj), new_call_id())]  # type: ignore[union-attr]
    return [ToolCall(c["name"], json.dumps(c.get("parameters", {})), new_call_id())
            for c in obj if isinstance(c, dict) and "name" in c]


def _calls_json(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def _logprobs_json(items: list[PositionLogprobs] | None) -> list[dict[str, Any]] | None:
    if items is None:
        return None

    def one(t) -> dict[str, Any]:
        return {"token": t.token, "logprob": clamp_logprob(t.logprob), "bytes": list(t.token.encode("utf-8"))}

    return [{**one(p.sampled), "top_logprobs": [one(t) for t in p.top]} for p in items]


@router.post("/v1/chat/completions", dependencies=[Depends(require_json)])
async def create_chat_completion(body: ChatCompletionRequest, request: Request,
                                 runtime: Annotated[NodeRuntime, Depends(get_ready_runtime)]) -> Response:
    # multi-model nodes: load on demand; held loaded until the request is admitted
    priority = resolve_priority(request, body.priority)
    async with model_runtime(request, runtime, body.model, priority, body.keep_alive) as runtime:
        check_model_and_n(runtime, body.model, body.n)
        mode = body.tool_mode()
        prompt = await off_loop(request, _render, runtime, body, mode)
        max_tokens = resolve_max_tokens(runtime, len(prompt), body.requested_max_tokens())
        sampling = body.to_sampling(max_tokens)
        if (schema := _forced_schema(body, mode)) is not None:  # a forced tool call wins over response_format
            sampling.json_schema, sampling.json_object = schema, False
        rid = new_id("chatcmpl", request)
        gen = Generation(runtime, rid, prompt, sampling, body.n, priority)
    headers = {"X-Request-Id": rid}
    if body.stream:
        return await _stream(gen, body, mode, request, headers)
    try:
        result = await until_disconnect(request, _collect(gen, body, mode, runtime))
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(result, headers=headers)


async def _collect(gen: Generation, req: ChatCompletionRequest, mode: ToolMode, runtime: NodeRuntime) -> dict[str, Any]:
    texts = [""] * gen.n
    logprobs: list[list[dict[str, Any]]] = [[] for _ in range(gen.n)]
    finish: list[str | None] = [None] * gen.n
    counts = [0] * gen.n
    async for i, d in gen.stream():
        texts[i] += d.text
        counts[i] += len(d.token_ids)
        if d.logprobs:
            logprobs[i].extend(_logprobs_json(d.logprobs) or [])
        if d.finish_reason:
            finish[i] = d.finish_reason
    choices = []
    for i in range(gen.n):
        content: str | None = texts[i]
        calls: list[ToolCall] = []
        if mode.forced:
            calls = _parse_forced(texts[i], mode, req)
            content = None if calls else texts[i]
        elif mode is ToolMode.AUTO:
            content, calls = runtime.engine.tool_parser(runtime.settings.tool_call_parser).extract(
                texts[i], [t.model_dump(exclude_none=True) for t in req.tools or []])
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = _calls_json(calls)
        reason = "tool_calls" if calls else finish[i]
        choices.append({"index": i, "message": message, "logprobs": {"content": logprobs[i]} if req.logprobs else None,
                        "finish_reason": reason})
    completion = sum(counts)
    return {"id": gen.request_id, "object": "chat.completion", "created": int(time.time()), "model": req.model,
            "choices": choices,
            "usage": Usage.of(len(gen.prompt_ids), completion, gen.cached_tokens).wire()}


async def _stream(gen: Generation, req: ChatCompletionRequest, mode: ToolMode, request: Request,
                  headers: dict[str, str]) -> Response:
    created = int(time.time())
    base = {"id": gen.request_id, "object": "chat.completion.chunk", "created": created, "model": req.model}
    stream = await start_stream(request, gen)
    if stream is None:
        return Response(status_code=499)
    return sse_response(_events(gen, req, mode, base, stream), headers=headers)


async def _events(gen: Generation, req: ChatCompletionRequest, mode: ToolMode, base: dict[str, Any],
                  stream: AsyncIterator[tuple[int, Delta]]) -> AsyncIterator[bytes]:
    started = [False] * gen.n
    texts = [""] * gen.n
    call_ids = [new_call_id() for _ in range(gen.n)]
    completion = 0
    parser = gen.runtime.engine.tool_parser(gen.runtime.settings.tool_call_parser) if mode is ToolMode.AUTO else None
    tool_dicts = [t.model_dump(exclude_none=True) for t in req.tools or []]
    gates = [ToolCallGate(getattr(parser, "start_marker", None)) for _ in range(gen.n)]

    async for i, d in stream:
        completion += len(d.token_ids)
        texts[i] += d.text
        delta: dict[str, Any] = {}
        if not started[i]:
            delta["role"] = "assistant"
            started[i] = True
        finish = d.finish_reason
        if mode is ToolMode.NAMED:
            fn: dict[str, Any] = {"arguments": d.text}
            call: dict[str, Any] = {"index": 0, "function": fn}
            if "role" in delta:
                call |= {"id": call_ids[i], "type": "function"}
                fn["name"] = req.tool_choice.function.name  # type: ignore[union-attr]
            delta["tool_calls"] = [call]
            finish = "tool_calls" if finish in ("stop",) else finish
        elif mode is ToolMode.REQUIRED:
            if finish is not None:  # a JSON array is only a call list once complete
                calls = _parse_forced(texts[i], mode, req)
                delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(_calls_json(calls))]
                finish = "tool_calls" if calls else finish
        elif mode is ToolMode.AUTO:
            delta["content"] = gates[i].feed(d.text)
            if finish is not None:
                _, calls = parser.extract(texts[i], tool_dicts)
                if calls:
                    delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(_calls_json(calls))]
                    finish = "tool_calls"
                else:
                    delta["content"] += gates[i].rest()
        else:
            delta["content"] = d.text
        choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
        if req.logprobs and d.logprobs:
            choice["logprobs"] = {"content": _logprobs_json(d.logprobs)}
        yield event({**base, "choices": [choice]})
    if req.include_usage():
        yield event({**base, "choices": [], "usage": Usage.of(len(gen.prompt_ids), completion,
                                                              gen.cached_tokens).wire()})
