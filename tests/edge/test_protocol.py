"""server/edge/protocol.py: requests convert themselves; replies come from the models."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from server.edge.protocol import (LOGPROB_FLOOR, ChatCompletionRequest, CompletionRequest, ToolMode, Usage,
                                  clamp_logprob)

MSG = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **kw})


def test_chat_converts_to_sampling_options_with_openai_defaults():
    s = chat().to_sampling(32)
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.repetition_penalty) == (32, 1.0, 1.0, 0, 1.0)
    assert s.logprobs is None and s.json_schema is None and s.json_object is False
    s = chat(temperature=0.0, top_k=-1, stop="END", seed=3, logprobs=True, top_logprobs=2,
             logit_bias={"5": 1.5}, response_format={"type": "json_object"}).to_sampling(8)
    assert (s.temperature, s.top_k, s.stop, s.seed, s.logprobs) == (0.0, 0, ["END"], 3, 2)
    assert s.logit_bias == {5: 1.5} and s.json_object is True


def test_completion_logprobs_and_json_schema():
    req = CompletionRequest.model_validate({"model": "m", "prompt": [1, 2], "logprobs": 0, "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"type": "object"}}}})
    s = req.to_sampling(4)
    assert s.logprobs == 0 and s.json_schema == {"type": "object"} and req.max_tokens == 16


@pytest.mark.parametrize("body, mode", [
    ({}, ToolMode.NONE),
    ({"tools": [TOOL], "tool_choice": "none"}, ToolMode.NONE),
    ({"tools": [TOOL]}, ToolMode.AUTO),
    ({"tools": [TOOL], "tool_choice": "auto"}, ToolMode.AUTO),
    ({"tools": [TOOL], "tool_choice": "required"}, ToolMode.REQUIRED),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, ToolMode.NAMED),
])
def test_tool_mode(body, mode):
    got = chat(**body).tool_mode()
    assert got is mode and got.forced is (mode in (ToolMode.REQUIRED, ToolMode.NAMED))


@pytest.mark.parametrize("body, needle", [
    ({"tool_choice": "required"}, "'tool_choice' needs 'tools'"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "unknown tool 'nope'"),
    ({"top_logprobs": 2}, "'top_logprobs' needs 'logprobs'"),
    ({"chat_template": "{{x}}"}, "'chat_template' is not accepted"),
    ({"stop": [""]}, "stop sequences must not be empty"),
    ({"logit_bias": {"x": 1}}, "logit_bias keys are token ids"),
])
def test_invalid_requests_say_why(body, needle):
    with pytest.raises(ValidationError, match=needle):
        chat(**body)


def test_usage_wire_shape():
    assert Usage.of(3, 4).wire() == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert Usage.of(3, 4, cached_tokens=2).wire() == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                                                      "prompt_tokens_details": {"cached_tokens": 2}}


def test_clamp_logprob():
    assert clamp_logprob(-1.5) == -1.5
    assert clamp_logprob(-math.inf) == LOGPROB_FLOOR == -9999.0
    assert clamp_logprob(math.nan) == LOGPROB_FLOOR
