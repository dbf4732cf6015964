"""Node in-process over the sim engine: priority validation (body and header), cached_tokens in
every usage shape, the capacity document's queue per priority class and cache section, the KV
event endpoint, and the llm-d model-server metrics (names and types)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.api.app import build_app
from server.capacity.schema import Capacity
from server.config import NodeSettings
from server.engine.sim import SimEngine
from server.runtime import NodeRuntime

MODEL = "sim-model"


async def _client(tmp_path, **opts):
    settings = NodeSettings(engine="sim", state_dir=tmp_path, max_num_seqs=1,
                            engine_options={"prefill_tokens_per_s": 1e6, "decode_ms": 1, **opts})
    runtime = NodeRuntime(settings, SimEngine(settings, MODEL))
    await runtime.start_engine()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(runtime)), base_url="http://127.0.0.1")
    client.runtime = runtime  # type: ignore[attr-defined]
    return client


@pytest.fixture
async def client(tmp_path):
    c = await _client(tmp_path)
    try:
        yield c
    finally:
        await c.aclose()
        await c.runtime.engine.stop()


def chat(content: str = "x" * 400, **kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **kw}


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", chat()),
                                       ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2})])
@pytest.mark.parametrize("value", [101, -101, 10**30])
async def test_priority_out_of_range_in_body_is_a_400_with_the_range(client, path, body, value):
    r = await client.post(path, json={**body, "priority": value})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "priority"
    assert "-100" in err["message"] and "100" in err["message"]


async def test_priority_must_be_an_integer(client):
    for value in (1.5, "3", True):
        r = await client.post("/v1/chat/completions", json=chat(priority=value))
        assert r.status_code == 400, value


@pytest.mark.parametrize("header", ["101", "-101", "abc", "1.0", "", "+-3", "9" * 40])
async def test_bad_priority_header_is_a_400_with_the_range(client, header):
    r = await client.post("/v1/chat/completions", json=chat(), headers={"X-Edgefleet-Priority": header})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "priority" and "X-Edgefleet-Priority" in err["message"] and "-100" in err["message"]


async def test_header_overrides_body_and_both_edges_are_accepted(client):
    seen: list[int] = []
    engine = client.runtime.engine
    original = engine.generate

    def spy(request):
        seen.append(request.priority)
        return original(request)

    engine.generate = spy
    assert (await client.post("/v1/chat/completions", json=chat(priority=100))).status_code == 200
    assert (await client.post("/v1/chat/completions", json=chat(priority=5),
                               headers={"X-Edgefleet-Priority": " -100 "})).status_code == 200
    assert (await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})).status_code == 200
    assert seen == [100, -100, 0]


def _usage_from_stream(text: str) -> dict:
    chunks = [json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: {")]
    return [c for c in chunks if c.get("usage")][-1]["usage"]


async def test_cached_tokens_in_every_usage_shape(client):
    prompt = "The same long context. " * 40
    body_chat = chat(prompt)
    body_cmpl = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    first = await client.post("/v1/chat/completions", json=body_chat)
    assert first.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    usages = [
        (await client.post("/v1/chat/completions", json=body_chat)).json()["usage"],
        _usage_from_stream((await client.post("/v1/chat/completions", json={**body_chat, **stream})).text),
    ]
    await client.post("/v1/completions", json=body_cmpl)
    usages += [
        (await client.post("/v1/completions", json=body_cmpl)).json()["usage"],
        _usage_from_stream((await client.post("/v1/completions", json={**body_cmpl, **stream})).text),
    ]
    for u in usages:
        cached = u["prompt_tokens_details"]["cached_tokens"]
        assert 0 < cached < u["prompt_tokens"] and cached % 16 == 0, u


async def test_capacity_reports_the_queue_per_priority_class(client):
    engine = client.runtime.engine
    engine.opts.decode_ms = 20  # slow steps so the queue is visible

    async def call(prio: int, content: str):
        return await client.post("/v1/chat/completions", json=chat(content, max_tokens=5),
                                 headers={"X-Edgefleet-Priority": str(prio)})

    tasks = [asyncio.ensure_future(call(0, "a" * 40))]
    await asyncio.sleep(0.03)  # the first one runs (max_num_seqs=1)
    tasks += [asyncio.ensure_future(call(p, c * 40)) for p, c in ((10, "b"), (10, "c"), (-5, "d"))]
    await asyncio.sleep(0.03)
    cap = Capacity.model_validate((await client.get("/v1/capacity")).json())
    classes = [(q.priority, q.waiting) for q in cap.load.queue_by_priority]
    assert classes == [(-5, 1), (10, 2)]
    assert sum(q.waiting_prompt_tokens for q in cap.load.queue_by_priority) == cap.load.waiting_prompt_tokens
    urgent = (await client.get("/v1/capacity", params={"prompt_tokens": 100, "priority": -5})).json()
    lazy = (await client.get("/v1/capacity", params={"prompt_tokens": 100, "priority": 50})).json()
    assert urgent["prediction"]["predicted_ttft_ms"] < lazy["prediction"]["predicted_ttft_ms"]
    assert (await client.get("/v1/capacity", params={"priority": 500})).status_code == 400
    assert all(r.status_code == 200 for r in await asyncio.gather(*tasks))
    cap = Capacity.model_validate((await client.get("/v1/capacity")).json())
    assert cap.load.queue_by_priority == [] and cap.schema_version == 2  # version 2: multi-model fields (issue 14)
    assert cap.cache is not None and cap.cache.block_size == 16 and cap.cache.prefix_caching and cap.cache.kv_events


async def test_kv_events_endpoint_pages_and_says_410_when_the_ring_moved_on(tmp_path):
    c = await _client(tmp_path, kv_events_ring=2, block_size=4)
    try:
        for i in range(3):
            assert (await c.post("/v1/completions", json={"model": MODEL, "prompt": f"{i}" * 80,
                                                         "max_tokens": 1})).status_code == 200
        gone = await c.get("/v1/kv/events", params={"since": 0})
        assert gone.status_code == 410 and gone.json()["error"]["param"] == "since"
        page = (await c.get("/v1/kv/events", params={"since": 1})).json()
        assert [e["seq"] for e in page["events"]] == [1, 2] and page["next"] == 3
        assert all(e["type"] == "BlockStored" and e["block_size"] == 4 for e in page["events"])
        assert (await c.get("/v1/kv/events", params={"since": 3})).json() == {"events": [], "next": 3}
    finally:
        await c.aclose()
        await c.runtime.engine.stop()


async def test_llm_d_model_server_metrics(client):
    await client.post("/v1/chat/completions", json=chat())
    families = {f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)}
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        assert families[name].type == "gauge", name
        assert len(families[name].samples) == 1
    info = families["vllm:cache_config_info"]
    assert info.type == "gauge"
    (sample,) = info.samples
    assert sample.value == 1
    assert sample.labels["block_size"] == "16" and sample.labels["num_gpu_blocks"] == str(65536 // 16)
    lora = families["vllm:lora_requests_info"]
    assert lora.type == "gauge"
    (sample,) = lora.samples
    assert set(sample.labels) == {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}
    assert sample.value > 1.6e9  # a Unix timestamp, as vLLM sets it


async def test_the_tokenizer_endpoint_lets_a_router_compute_the_nodes_prompt_ids(tmp_path):
    from server.tokenspec import TokenizerSpec, build_tokenizer, chat_messages
    from server.edge.protocol import ChatCompletionRequest

    c = await _client(tmp_path, chars_per_token=3)
    try:
        doc = (await c.get("/v1/tokenizer")).json()
        assert doc["model"] == MODEL and doc["kind"] == "sim" and doc["chars_per_token"] == 3
        tok = build_tokenizer(TokenizerSpec.from_json(doc))
        body = chat(content="hello " * 40)
        node_ids = c.runtime.engine.render_chat(chat_messages(ChatCompletionRequest.model_validate(body).messages),
                                                None)
        assert tok.render_chat(chat_messages(ChatCompletionRequest.model_validate(body).messages), None) == node_ids
        usage = (await c.post("/v1/chat/completions", json=body)).json()["usage"]
        assert usage["prompt_tokens"] == len(node_ids)  # what the node counted is what the router computes
    finally:
        await c.aclose()
        await c.runtime.engine.stop()
