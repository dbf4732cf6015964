"""tool_choice=auto over a scripted engine that emits a Hermes tool call, streamed and not."""

from __future__ import annotations

import json

import pytest

from tests.fakes import ScriptedEngine

PIECES = ["Checking. ", "<tool", '_call>{"name": "get_weather", "arguments": ', '{"city": "Paris"}}', "</tool_call>"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture
async def client(node_client):
    return await node_client(ScriptedEngine(texts=PIECES))


BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS}


async def test_auto_tool_call_non_streaming(client):
    r = (await client.post("/v1/chat/completions", json=BODY)).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Checking."
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}


async def test_auto_tool_call_streaming_never_leaks_the_call_as_content(client):
    r = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
    events = [json.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")]
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert content == "Checking. "
    calls = [tc for e in events for tc in e["choices"][0]["delta"].get("tool_calls") or []]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_choice_none_streams_raw_text(client):
    r = await client.post("/v1/chat/completions", json={**BODY, "stream": True, "tool_choice": "none"})
    events = [json.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "".join(PIECES)
