"""RELIABILITY D4: a request failing inside the engine gets a 5xx envelope; others go on.
Uses a scripted engine in-process; the real-engine lifecycle cases are in tests/e2e."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from server.api.app import build_app
from server.config import NodeSettings
from server.runtime import NodeRuntime
from tests.fakes import ScriptedEngine


@pytest.fixture
async def client(node_client):
    return await node_client(ScriptedEngine(fail_prompt="explode", tokens=5, step_s=0.01))


def body(content: str, **kw):
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **kw}


async def test_d4_engine_failure_is_a_5xx_envelope_and_others_continue(client):
    bad, good = await asyncio.gather(client.post("/v1/chat/completions", json=body("explode")),
                                     client.post("/v1/chat/completions", json=body("fine")))
    assert bad.status_code == 500
    err = bad.json()["error"]
    assert err["code"] == "engine_error" and "out of memory" not in err["message"]
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 5
    assert client.runtime.active == {}  # accounting released on the failure path too


async def test_d4_failure_after_first_token_is_in_band(client):
    r = await client.post("/v1/chat/completions", json=body("explode", stream=True))
    assert r.status_code == 200
    lines = [ln for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert json.loads(lines[-1][6:])["error"]["code"] == "engine_error"
    assert "data: [DONE]" not in lines
    assert client.runtime.active == {}


async def test_streaming_usage_and_single_role(client):
    r = await client.post("/v1/chat/completions",
                          json=body("hello", stream=True, stream_options={"include_usage": True}))
    events = [json.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")]
    assert [("role" in e["choices"][0]["delta"]) for e in events if e["choices"]] == [True, False, False, False, False]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5
    assert r.text.rstrip().endswith("data: [DONE]")


async def test_capacity_prediction_and_admission_fields(client):
    cap = (await client.get("/v1/capacity", params={"prompt_tokens": 100, "max_tokens": 50})).json()
    assert cap["prediction"]["would_admit"] is True
    assert cap["prediction"]["predicted_ttft_ms"] > 0
    too_long = (await client.get("/v1/capacity", params={"prompt_tokens": 250, "max_tokens": 50})).json()
    assert too_long["prediction"]["would_admit"] is False
    assert (await client.get("/v1/capacity", params={"prompt_tokens": -1})).status_code == 400


async def test_d3_dead_engine_is_unhealthy_refuses_work_and_calls_on_fatal(tmp_path):
    """The deterministic half of D3 (the e2e test kills a real engine, but cannot time its
    polls into the short window between the node noticing and exiting)."""
    engine = ScriptedEngine()
    runtime = NodeRuntime(NodeSettings(state_dir=tmp_path), engine)
    fatal: list[str] = []
    app = build_app(runtime, on_fatal=fatal.append)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            for _ in range(100):  # the lifespan starts the engine in a task
                if (await c.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert (await c.get("/health")).status_code == 200
            engine.healthy = False
            health = await c.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "unhealthy"
            assert (await c.get("/ready")).status_code == 503
            r = await c.post("/v1/chat/completions", json=body("hi"))
            assert r.status_code >= 500 and r.json()["error"]["code"]
            for _ in range(40):  # the watcher polls every 0.5 s
                if fatal:
                    break
                await asyncio.sleep(0.05)
            assert fatal == ["engine died"]
