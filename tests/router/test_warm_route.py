"""POST /v1/fleet/warm decisions without a network: which node is asked, and when nobody is."""

from __future__ import annotations

import asyncio

import pytest

import server.router.warm as warm
from server.edge.errors import UpstreamError
from server.router.config import RouterSettings
from server.router.core import Router
from tests.router.helpers import node


def router_with(*nodes):
    r = Router(RouterSettings())
    for n in nodes:
        r.registry._nodes[n.url] = n
    return r


def cold(n, load_s):
    n.capacity.models[0].state, n.capacity.models[0].load_s = "unloaded", load_s
    return n


@pytest.fixture
def asked(monkeypatch):
    calls = []

    async def fake_load_on(router, n, model):
        calls.append((n.url, model))
        return 200, {"state": "loaded", "load_s": 0.5}

    monkeypatch.setattr(warm, "_load_on", fake_load_on)
    return calls


async def test_nothing_to_do_when_the_chosen_node_is_warm(asked):
    r = router_with(node("http://warm:1"), cold(node("http://cold:1"), 1.0))
    status, body = await warm.warm_model(r, "m")
    assert status == 200 and body["action"] == "none" and body["node"] == "warm:1" and asked == []


async def test_cold_everywhere_loads_on_the_fastest_loading_node(asked):
    r = router_with(cold(node("http://slow:1"), 30.0), cold(node("http://fast:1"), 2.0))
    status, body = await warm.warm_model(r, "m", wait=True)
    assert status == 200 and body["node"] == "fast:1" and body["load_s"] == 0.5
    assert asked == [("http://fast:1", "m")]
    status, body = await warm.warm_model(r, "m")  # no wait: 202 at once, the load goes on
    assert status == 202 and body["state"] == "loading" and body["was"] == "unloaded"
    await asyncio.sleep(0)
    assert len(asked) == 2


async def test_a_refused_load_is_an_upstream_error(monkeypatch):
    async def refuse(router, n, model):
        return 503, {"error": {"message": "needs 9 GiB", "code": "model_load_failed"}}

    monkeypatch.setattr(warm, "_load_on", refuse)
    r = router_with(cold(node("http://a:1"), 1.0))
    with pytest.raises(UpstreamError, match="needs 9 GiB"):
        await warm.warm_model(r, "m", wait=True)
