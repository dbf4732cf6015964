"""Gateway controls (keys, limits, usage, Origin) and the MCP server, against real processes."""

from __future__ import annotations

import json
import os

import httpx
import httpx2
import openai
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from server.edge.security import hash_key
from tests.router.conftest import EDGEFLEET, fleet, wait_until

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "hello"}]
KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key", "carol": "carol-secret-key",
        "dave": "dave-secret-key", "erin": "erin-admin-key"}


@pytest.fixture(scope="module")
def gw(launcher):
    node = launcher.node("gw-node", decode_ms=5, extra=["--api-key", "node-only-key"])
    fleet_file = launcher.tmp / "fleet.toml"
    fleet_file.write_text(f'''
[router]
poll_interval = 0.3

[[nodes]]
url = "{node.url}"
api_key = "node-only-key"

[[keys]]
id = "alice"
hash = "{hash_key(KEYS['alice'])}"
requests_per_min = 3

[[keys]]
id = "bob"
hash = "{hash_key(KEYS['bob'])}"
max_concurrent = 1

[[keys]]
id = "carol"
hash = "{hash_key(KEYS['carol'])}"

[[keys]]
id = "dave"
hash = "{hash_key(KEYS['dave'])}"
requests_per_min = 1

[[keys]]
id = "erin"
hash = "{hash_key(KEYS['erin'])}"
admin = true
''')
    audit = launcher.tmp / "gw.audit.jsonl"
    router = launcher.router("--fleet", str(fleet_file), "--audit-log", str(audit), "--log-prompts",
                             name="gw", wait_ready=False)
    assert wait_until(lambda: httpx.get(router.url + "/ready", trust_env=False).status_code == 200, timeout=15)
    return router, audit


def oa(router, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0)


def test_auth_required_except_health(gw):
    router, _ = gw
    assert httpx.get(router.url + "/health", trust_env=False).status_code == 200
    for path in ("/v1/models", "/v1/fleet", "/v1/usage", "/metrics", "//v1/models", "/mcp"):
        assert httpx.get(router.url + path, trust_env=False).status_code == 401, path
    with pytest.raises(openai.AuthenticationError):
        oa(router, "wrong").models.list()
    # The node's own key is not a client key of the router.
    with pytest.raises(openai.AuthenticationError):
        oa(router, "node-only-key").models.list()
    assert [m.id for m in oa(router, KEYS["carol"]).models.list().data] == ["sim-model"]


def test_origin_and_host_guard(gw):
    router, _ = gw
    h = {"authorization": f"Bearer {KEYS['carol']}"}
    assert httpx.get(router.url + "/v1/models", headers={**h, "origin": "https://evil.example"},
                     trust_env=False).status_code == 403
    assert httpx.get(router.url + "/v1/models", headers={**h, "host": "evil.example"},
                     trust_env=False).status_code == 403


def test_requests_per_minute_limit(gw):
    router, _ = gw
    c = oa(router, KEYS["alice"])
    for _ in range(3):
        c.chat.completions.create(model="sim-model", messages=MSG, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="sim-model", messages=MSG, max_tokens=2)
    resp = info.value.response
    assert info.value.code == "rate_limit_exceeded" and int(resp.headers["retry-after"]) >= 1
    # Another key is unaffected.
    oa(router, KEYS["carol"]).chat.completions.create(model="sim-model", messages=MSG, max_tokens=2)


def test_max_concurrent_limit(gw):
    router, _ = gw
    h = {"authorization": f"Bearer {KEYS['bob']}"}
    body = {"model": "sim-model", "messages": MSG, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, headers=h, timeout=30,
                      trust_env=False) as first:
        lines = first.iter_lines()  # keep a reference: a dropped generator closes the stream
        next(lines)
        r = httpx.post(router.url + "/v1/chat/completions", json={**body, "stream": False}, headers=h,
                       trust_env=False)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    # Released once the stream ended.
    assert wait_until(lambda: httpx.post(router.url + "/v1/chat/completions",
                                         json={**body, "stream": False, "max_tokens": 1}, headers=h,
                                         trust_env=False).status_code == 200, timeout=5)


def test_usage_per_key_and_audit(gw):
    router, audit = gw
    h = {"authorization": f"Bearer {KEYS['carol']}"}
    usage = httpx.get(router.url + "/v1/usage", headers=h, trust_env=False).json()
    assert list(usage["keys"]) == ["carol"]  # a key sees only itself
    assert usage["keys"]["carol"]["requests"] >= 1 and usage["keys"]["carol"]["completion_tokens"] >= 2
    def read() -> list[dict]:  # the router writes audit lines on its own thread
        return [json.loads(x) for x in audit.read_text().splitlines()]

    assert wait_until(lambda: {x["key_id"] for x in read()} >= {"alice", "carol"}, timeout=10)
    lines = read()
    assert any(x["status"] == 429 and x["error"] == "rate_limit_exceeded" for x in lines)
    assert any(x.get("prompt") == MSG for x in lines)  # --log-prompts is on here
    text = audit.read_text()
    for secret in (*KEYS.values(), "node-only-key"):
        assert secret not in text


def test_fleet_view_never_shows_node_keys(gw):
    router, _ = gw
    doc = fleet(router, authorization=f"Bearer {KEYS['erin']}")  # an admin key (G4)
    assert "node-only-key" not in json.dumps(doc)
    assert doc["nodes"][0]["health"] == "closed"


def _tool_json(result) -> object:
    assert not result.is_error, result
    if result.structured_content is not None:
        sc = result.structured_content
        return sc.get("result", sc) if isinstance(sc, dict) else sc
    return json.loads(result.content[0].text)


async def test_mcp_over_streamable_http(gw):
    router, _ = gw
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {KEYS['carol']}"}, timeout=30)
    async with Client(streamable_http_client(router.url + "/mcp", http_client=http)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"list_models", "list_nodes", "get_node_capacity", "pick_node", "complete", "warm_model"}
        models = _tool_json(await client.call_tool("list_models", {}))
        assert models[0]["id"] == "sim-model"
        nodes = _tool_json(await client.call_tool("list_nodes", {}))
        assert nodes[0]["name"] == "gw-node" and nodes[0]["simulated"] is True
        assert nodes[0]["url"] is None  # a client key does not see where nodes are (G4)
        denied = await client.call_tool("get_node_capacity", {"node": "gw-node"})
        assert denied.is_error and "admin_required:" in denied.content[0].text
        pick = _tool_json(await client.call_tool("pick_node", {"model": "sim-model", "prompt_tokens": 100,
                                                               "max_tokens": 10}))
        assert pick["node"] == "gw-node" and pick["predicted_ttft_ms"] > 0 and pick["reason"]
        assert pick["base_url"] is None
        out = _tool_json(await client.call_tool("complete", {"model": "sim-model", "messages": MSG,
                                                             "max_tokens": 3}))
        assert out["content"] == " tok tok tok" and out["node"] == "gw-node"
        bad = await client.call_tool("pick_node", {"model": "nope"})
        assert bad.is_error and "model_not_found: The model 'nope'" in bad.content[0].text  # an agent can act on it
    await http.aclose()
    admin = httpx2.AsyncClient(headers={"authorization": f"Bearer {KEYS['erin']}"}, timeout=30)
    async with Client(streamable_http_client(router.url + "/mcp", http_client=admin)) as client:
        nodes = _tool_json(await client.call_tool("list_nodes", {}))
        assert nodes[0]["url"].startswith("http://127.0.0.1:")
        cap = _tool_json(await client.call_tool("get_node_capacity", {"node": "gw-node"}))
        assert cap["identity"]["simulated"] is True
        pick = _tool_json(await client.call_tool("pick_node", {"model": "sim-model"}))
        assert pick["base_url"] == nodes[0]["url"] + "/v1"
        gone = await client.call_tool("get_node_capacity", {"node": "nope"})
        assert gone.is_error and "node_not_found:" in gone.content[0].text
    await admin.aclose()


async def test_mcp_complete_counts_and_limits_the_calling_key(gw):
    """complete runs in-process past the auth middleware; it must still be the caller's call."""
    router, audit = gw
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {KEYS['dave']}"}, timeout=30)
    async with Client(streamable_http_client(router.url + "/mcp", http_client=http)) as client:
        args = {"model": "sim-model", "messages": MSG, "max_tokens": 2}
        assert _tool_json(await client.call_tool("complete", args))["node"] == "gw-node"
        over = await client.call_tool("complete", args)  # dave may make one request a minute
        assert over.is_error and "rate_limit_exceeded: Rate limit exceeded" in over.content[0].text
    await http.aclose()
    usage = httpx.get(router.url + "/v1/usage", headers={"authorization": f"Bearer {KEYS['dave']}"},
                      trust_env=False).json()
    assert usage["keys"]["dave"]["requests"] == 1 and usage["keys"]["dave"]["completion_tokens"] == 2
    def read() -> list[dict]:  # the router writes audit lines on its own thread
        return [json.loads(x) for x in audit.read_text().splitlines()]

    assert wait_until(lambda: {x["key_id"] for x in read() if x["status"] == 429} >= {"dave"}, timeout=10)
    lines = read()
    assert "anonymous" not in {x["key_id"] for x in lines}


async def test_mcp_http_needs_key_and_origin(gw):
    router, _ = gw
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    hdr = {"accept": "application/json, text/event-stream"}
    assert httpx.post(router.url + "/mcp", json=init, headers=hdr, trust_env=False).status_code == 401
    r = httpx.post(router.url + "/mcp", json=init, trust_env=False,
                   headers={**hdr, "authorization": f"Bearer {KEYS['carol']}", "origin": "https://evil.example"})
    assert r.status_code == 403


async def test_mcp_over_stdio(gw):
    router, _ = gw
    params = StdioServerParameters(command=EDGEFLEET, args=["mcp", "--router", router.url],
                                   env={"EDGEFLEET_API_KEY": KEYS["carol"],  # and this checkout's code:
                                        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {})})
    async with Client(params) as client:
        pick = _tool_json(await client.call_tool("pick_node", {"model": "sim-model", "prompt_tokens": 10,
                                                               "max_tokens": 5}))
        assert pick["node"] == "gw-node" and pick["base_url"] is None  # the router applies carol's scope
        models = _tool_json(await client.call_tool("list_models", {}))  # /v1/fleet is 403: /v1/models
        assert [m["id"] for m in models] == ["sim-model"]
        out = _tool_json(await client.call_tool("complete", {"model": "sim-model", "messages": MSG,
                                                             "max_tokens": 2}))
        assert out["content"] == " tok tok"
