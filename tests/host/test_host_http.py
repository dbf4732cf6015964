"""The multi-model node's HTTP surface in-process (fake engines): dispatch by model, 404 for an
unknown model, /v1/models with states, the admin routes and who may call them."""

from __future__ import annotations

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
