"""The one Content-Type rule (server/edge/media.py), then the same rule on the node and the router."""

from __future__ import annotations

import pytest

from server.edge.errors import UnsupportedMediaType
from server.edge.media import is_json, require_json

ACCEPTED = ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json",
            b"application/merge-patch+json;charset=UTF-8"]
REFUSED = [None, "", "text/plain", "application/x-www-form-urlencoded", "application/+json", "text/json",
           "application/jsonx", b"multipart/form-data; boundary=x"]


@pytest.mark.parametrize("value", ACCEPTED)
def test_json_and_plus_json_are_accepted(value):
    assert is_json(value) is True
    require_json(value)


@pytest.mark.parametrize("value", REFUSED)
def test_anything_else_and_a_missing_header_is_415(value):
    assert is_json(value) is False
    with pytest.raises(UnsupportedMediaType) as err:
        require_json(value)
    assert err.value.status_code == 415 and err.value.code == "unsupported_media_type"


CHAT = b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_node_applies_the_rule(node_client, path):
    client = await node_client()
    body = CHAT if "chat" in path else b'{"model": "fake-model", "prompt": "hi"}'
    for ctype in ("application/json", "application/json; charset=utf-8", "application/vnd.edgefleet+json"):
        r = await client.post(path, content=body, headers={"content-type": ctype})
        assert r.status_code == 200, (ctype, r.text)
    for headers in ({"content-type": "text/plain"}, {}):
        r = await client.post(path, content=body, headers=headers)
        assert r.status_code == 415, (headers, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_router_applies_the_rule(router_client, path):
    client = router_client()
    body = CHAT if "chat" in path else b'{"model": "fake-model", "prompt": "hi"}'
    for ctype in ("application/json", "application/json; charset=utf-8", "application/vnd.edgefleet+json"):
        r = await client.post(path, content=body, headers={"content-type": ctype})
        # Past the Content-Type gate: the fleet is empty, so no node serves the model.
        assert r.status_code == 503, (ctype, r.text)
        assert r.json()["error"]["code"] == "no_healthy_node"
    for headers in ({"content-type": "text/plain"}, {}):
        r = await client.post(path, content=body, headers=headers)
        assert r.status_code == 415, (headers, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type"
        assert r.headers["x-edgefleet-node"] == "router"
