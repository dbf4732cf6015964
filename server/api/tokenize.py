"""POST /tokenize and POST /detokenize, shaped like vLLM's: a benchmark (or any client)
counts and builds prompts in the node's own tokens without a local copy of the tokenizer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, model_validator

from server.api.deps import get_ready_runtime, require_json
from server.edge.errors import InvalidRequest
from server.api.generation import check_model_and_n
from server.edge.protocol import ChatMessage
from server.runtime import NodeRuntime

router = APIRouter()
Runtime = Annotated[NodeRuntime, Depends(get_ready_runtime)]


class TokenizeRequest(BaseModel):
    """vLLM's two forms: ``{model, prompt}`` or ``{model, messages, add_generation_prompt}``."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = Field(None, description="Default: true for a prompt, false for messages "
                                            "(the chat template writes its own markers), as in vLLM.")
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


def _messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text() or ""}
        if m.tool_calls:
            d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


@router.post("/tokenize", response_model=TokenizeResponse, dependencies=[Depends(require_json)])
async def tokenize(req: TokenizeRequest, runtime: Runtime) -> TokenizeResponse:
    if req.model is not None:
        check_model_and_n(runtime, req.model, 1)
    engine = runtime.engine
    if req.prompt is not None:
        ids = engine.tokenize(req.prompt, add_special_tokens=req.add_special_tokens is not False)
    else:
        try:
            ids = engine.render_chat(_messages(req.messages or []), req.tools, req.add_generation_prompt)
        except Exception as exc:  # the template's own errors (jinja2, ValueError)
            raise InvalidRequest(f"The chat template rejected these messages: {str(exc)[:200]}", param="messages")
        if req.add_special_tokens:
            ids = engine.tokenize("", add_special_tokens=True) + ids
    return TokenizeResponse(count=len(ids), max_model_len=engine.info.max_model_len, tokens=ids)


@router.post("/detokenize", response_model=DetokenizeResponse, dependencies=[Depends(require_json)])
async def detokenize(req: DetokenizeRequest, runtime: Runtime) -> DetokenizeResponse:
    if req.model is not None:
        check_model_and_n(runtime, req.model, 1)
    if any(t < 0 for t in req.tokens):
        raise InvalidRequest("token ids must be non-negative.", param="tokens")
    try:
        text = runtime.engine.detokenize(req.tokens)
    except Exception as exc:  # an id outside the vocabulary
        raise InvalidRequest(f"cannot detokenize these ids: {str(exc)[:200]}", param="tokens")
    return DetokenizeResponse(prompt=text)
