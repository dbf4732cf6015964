"""The multi-model node's HTTP surface in-process (fake engines): dispatch by model, 404 for an
unknown model, /v1/models with states, the admin routes and who may call them."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from server.api.app import build_app
from tests.host.hostfakes import make_host


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
async def node(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {"gib": 6}, "b": {"gib": 6, "fail": "bad weights at 0xdeadbeefcafe"}},
                             budget_gib=10)
    app = build_app(host, api_key="k")
    await host.start_engine()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                 headers={"Authorization": "Bearer k"}) as c:
        c.host, c.log = host, log  # type: ignore[attr-defined]
        yield c
    await host.stop()


async def test_requests_go_to_their_model_which_loads_on_first_use(node):
    r = await node.get("/v1/models")
    assert r.status_code == 200
    assert {m["id"]: m["state"] for m in r.json()["data"]} == {"a": "unloaded", "b": "unloaded"}
    r = await node.post("/v1/chat/completions", json=chat("a"))
    assert r.status_code == 200 and r.json()["model"] == "a" and r.json()["usage"]["completion_tokens"] == 3
    r = await node.post("/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 200
    assert node.log == ["start a"]
    states = {m["id"]: m["state"] for m in (await node.get("/v1/models")).json()["data"]}
    assert states == {"a": "loaded", "b": "unloaded"}


async def test_unknown_model_is_404_and_names_nothing_else(node):
    r = await node.post("/v1/chat/completions", json=chat("nope"))
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "'a'" not in err["message"] and "'b'" not in err["message"]


async def test_failed_load_is_a_503_with_the_reason_and_the_other_model_serves(node):
    r = await node.post("/v1/chat/completions", json=chat("b"))
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "model_load_failed" and "bad weights" in err["message"]
    assert "0xdeadbeefcafe" not in err["message"] and int(r.headers["retry-after"]) >= 1
    assert (await node.post("/v1/chat/completions", json=chat("a"))).status_code == 200
    cap = (await node.get("/v1/capacity")).json()
    b = next(m for m in cap["models"] if m["id"] == "b")
    assert cap["schema_version"] == 2 and b["state"] == "failed" and "bad weights" in b["state_reason"]


async def test_admin_routes_load_and_unload(node):
    r = await node.post("/v1/models/a/load")
    assert r.status_code == 200 and r.json()["state"] == "loaded"
    r = await node.post("/v1/models/a/unload")
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    r = await node.post("/v1/models/a/sleep")  # nothing loaded: stays unloaded
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    assert (await node.post("/v1/models/zzz/load")).status_code == 404
    assert node.log == ["start a", "stop a"]


async def test_admin_routes_need_the_key(node):
    r = await node.post("/v1/models/a/load", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and node.log == []


async def test_admin_refused_on_a_keyless_non_loopback_bind(tmp_path):
    host, _, _ = make_host(tmp_path, {"a": {}}, host="0.0.0.0")
    app = build_app(host, api_key=None)
    await host.start_engine()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.post("/v1/models/a/load")
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
        assert (await c.post("/v1/chat/completions", json=chat("a"))).status_code == 200  # inference still works
    await host.stop()


def test_fleet_table_marks_models_that_are_not_loaded():
    from server.router.cli import _model_label

    assert _model_label({"id": "a"}) == "a"  # a version-1 node: loaded
    assert _model_label({"id": "a", "state": "loaded"}) == "a"
    assert _model_label({"id": "b", "state": "sleeping"}) == "b (sleeping)"
    assert _model_label({"id": "c", "state": "failed"}) == "c (failed)"


def samples(text: str, name: str) -> dict[str, float]:
    """``{label text: value}`` of one metric in a Prometheus exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line[len(name):].rpartition(" ")
            out[labels] = float(value)
    return out


async def test_metrics_carry_every_model_under_its_name(node):
    assert (await node.post("/v1/chat/completions", json=chat("a"))).status_code == 200
    assert (await node.post("/v1/chat/completions", json=chat("a"))).status_code == 200
    r = await node.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert samples(text, "vllm:request_success_total") == {'{finished_reason="length",model_name="a"}': 2.0}
    assert samples(text, "vllm:time_to_first_token_seconds_count") == {'{model_name="a"}': 2.0}
    assert samples(text, "vllm:generation_tokens_total") == {'{model_name="a"}': 6.0}
    # the engine gauges: one series per model, loaded or not (b never loaded: zeros)
    assert samples(text, "vllm:num_requests_running") == {'{model_name="a"}': 0.0, '{model_name="b"}': 0.0}
    assert set(samples(text, "vllm:num_requests_waiting")) == {'{model_name="a"}', '{model_name="b"}'}
    assert samples(text, "edgefleet_node_state")['{state="ready"}'] == 1.0
    # a model's counters survive its unload and reload (they live in the node's registry)
    assert (await node.post("/v1/models/a/unload")).status_code == 200
    assert (await node.post("/v1/chat/completions", json=chat("a"))).status_code == 200
    text = (await node.get("/metrics")).text
    assert samples(text, "vllm:request_success_total") == {'{finished_reason="length",model_name="a"}': 3.0}
    assert node.log == ["start a", "stop a", "start a"]


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, [1], {"s": 1}, "1e3", "", 10**400])
async def test_bad_keep_alive_is_a_400_naming_the_field(node, value):
    r = await node.post("/v1/chat/completions", json={**chat("a"), "keep_alive": value})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "keep_alive" and err["type"] == "invalid_request_error"
    r = await node.post("/v1/completions", json={"model": "a", "prompt": "x", "keep_alive": value})
    assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive"
    assert node.log == []  # refused before anything loaded


async def test_request_keep_alive_follows_ollama(node):
    r = await node.post("/v1/chat/completions", json={**chat("a"), "keep_alive": "1h"})
    assert r.status_code == 200
    card = next(m for m in (await node.get("/v1/models")).json()["data"] if m["id"] == "a")
    assert card["state"] == "loaded" and card["keep_alive_s"] == 3600.0
    r = await node.post("/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 1, "keep_alive": -1})
    cap = (await node.get("/v1/capacity")).json()
    assert r.status_code == 200 and next(m for m in cap["models"] if m["id"] == "a")["keep_alive_s"] is None
    r = await node.post("/v1/chat/completions", json={**chat("a"), "keep_alive": 0})  # release after this one
    assert r.status_code == 200
    for _ in range(40):
        await asyncio.sleep(0.05)
        if node.host.slots["a"].state == "unloaded":
            break
    assert node.host.slots["a"].state == "unloaded" and node.log == ["start a", "stop a"]


def test_the_router_validates_keep_alive_with_the_node_schema():
    from server.edge.errors import InvalidRequest
    from server.edge.protocol import ChatCompletionRequest
    from server.router.proxy import parse_body

    ok = parse_body(b'{"model": "a", "messages": [{"role": "user", "content": "hi"}], "keep_alive": "5m"}',
                    ChatCompletionRequest)
    assert ok.keep_alive == "5m"
    with pytest.raises(InvalidRequest) as bad:
        parse_body(b'{"model": "a", "messages": [{"role": "user", "content": "hi"}], "keep_alive": "later"}',
                   ChatCompletionRequest)
    assert bad.value.param == "keep_alive" and "5m" in bad.value.message


async def test_a_single_model_node_accepts_keep_alive_and_ignores_it(tmp_path):
    from server.config import NodeSettings
    from server.engine.sim import SimEngine
    from server.runtime import NodeRuntime

    settings = NodeSettings(engine="sim", state_dir=tmp_path, engine_options={"decode_ms": 1})
    runtime = NodeRuntime(settings, SimEngine(settings, "solo"))
    await runtime.start_engine()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(runtime)),
                                 base_url="http://127.0.0.1") as c:
        r = await c.post("/v1/chat/completions", json={**chat("solo"), "keep_alive": 0})
        assert r.status_code == 200 and runtime.state == "ready" and runtime.engine.is_healthy()
        r = await c.post("/v1/chat/completions", json={**chat("solo"), "keep_alive": "never"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive"
    await runtime.engine.stop()
