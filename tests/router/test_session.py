"""Session key and priority on the router's request path: validation, key limits, forwarding."""

import json

import httpx
import pytest

from server.edge.errors import InvalidRequest
from server.edge.protocol import ChatCompletionRequest
from server.router.limits import KeyLimits
from server.router.session import build_context, cached_tokens_of, key_priority, parse_priority, parse_session

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi " * 200}]}


def ctx(body=None, headers=None, limits=None):
    raw = json.dumps(body or BODY).encode()
    req = ChatCompletionRequest.model_validate_json(raw)
    return build_context(req, raw, headers or {}, limits, 150, 16)


def test_session_from_header_else_user_and_never_raw():
    assert parse_session({b"x-edgefleet-session": b"agent-42"}, "bob") == parse_session(
        {b"x-edgefleet-session": b"agent-42"}, None)
    assert parse_session({}, "bob") not in (None, "bob")
    assert parse_session({}, None) is None
    c = ctx(headers={b"x-edgefleet-session": b"agent-42"})
    assert c.info.session and "agent-42" not in c.info.session and c.info.hashes


@pytest.mark.parametrize("value", [b"x" * 257, b"", b"has space", b"tab\there", "caf\u00e9".encode()])
def test_bad_session_header_is_invalid_request(value):
    with pytest.raises(InvalidRequest) as e:
        parse_session({b"x-edgefleet-session": value}, None)
    assert e.value.param == "X-Edgefleet-Session" and e.value.status_code == 400
    assert parse_session({b"x-edgefleet-session": b"x" * 256}, None)  # the limit itself is fine


@pytest.mark.parametrize("body,header,param", [
    ({"priority": 101}, None, "priority"), ({"priority": -101}, None, "priority"), ({"priority": 1.5}, None, "priority"),
    ({"priority": "1"}, None, "priority"), ({"priority": True}, None, "priority"),
    ({}, b"urgent", "X-Edgefleet-Priority"), ({}, b"1000", "X-Edgefleet-Priority"), ({}, b"1.0", "X-Edgefleet-Priority"),
])
def test_bad_priority_names_the_range(body, header, param):
    raw = json.dumps({**BODY, **body}).encode()
    with pytest.raises(InvalidRequest, match=r"from -100 to 100") as e:
        parse_priority(raw, {b"x-edgefleet-priority": header} if header else {})
    assert e.value.param == param


def test_priority_body_wins_and_header_is_forwarded_in_the_body():
    assert parse_priority(json.dumps({**BODY, "priority": -5}).encode(), {b"x-edgefleet-priority": b"7"}) == (-5, True)
    c = ctx(headers={b"x-edgefleet-priority": b" 7 "})
    assert c.info.priority == 7 and json.loads(c.body)["priority"] == 7
    plain = ctx()
    assert plain.info.priority is None and plain.body == json.dumps(BODY).encode()  # untouched, no priority


def test_key_default_and_clamp():
    lim = KeyLimits(priority_default=10, priority_min=0)
    assert key_priority(None, lim) == (10, None)
    assert key_priority(5, lim) == (5, None)
    assert key_priority(-50, lim) == (0, 0)  # asked for more urgency than allowed: clamped, and said so
    assert key_priority(None, KeyLimits(priority_min=3)) == (3, None)  # the node default 0 is too urgent
    assert key_priority(-50, None) == (-50, None)
    c = ctx(body={**BODY, "priority": -50}, limits=lim)
    assert c.clamped == 0 and c.info.priority == 0 and json.loads(c.body)["priority"] == 0


def test_cached_tokens_of_usage():
    assert cached_tokens_of({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 64}}) == 64
    assert cached_tokens_of({"prompt_tokens": 10}) is None
    assert cached_tokens_of({"prompt_tokens_details": {"cached_tokens": "x"}}) is None
    assert cached_tokens_of(None) is None


async def test_router_answers_400_envelopes_before_routing():
    from server.router.app import create_app
    from server.router.config import RouterSettings

    app, _ = create_app(RouterSettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.post("/v1/chat/completions", json=BODY, headers={"X-Edgefleet-Session": "a" * 300})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == "X-Edgefleet-Session"
        r = await c.post("/v1/chat/completions", json={**BODY, "priority": 500})
        assert r.status_code == 400 and "-100 to 100" in r.json()["error"]["message"]
        r = await c.get("/v1/fleet/pick", params={"model": "m", "priority": 500})
        assert r.status_code == 400 and r.json()["error"]["param"] == "priority"


def test_pick_info_for_the_mcp_tool_and_get_pick():
    from server.router.session import pick_info

    messages = [{"role": "system", "content": "s" * 3000}, {"role": "user", "content": [{"type": "text", "text": "q"}]}]
    info = pick_info("m", 512, 64, messages=messages, session="agent-7", priority=-3)
    assert len(info.hashes) == 11 and info.prompt_tokens > 700  # from the messages, not the default
    assert info.session and info.session != "agent-7" and info.priority == -3
    # The same conversation as a validated request hashes the same (what the proxy indexed).
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    assert build_context(req, b"{}", {}, None, 1, 1).info.hashes == info.hashes
    with pytest.raises(InvalidRequest, match="-100 to 100"):
        pick_info("m", 512, 64, priority=101)
    with pytest.raises(InvalidRequest):
        pick_info("m", 512, 64, session="has space")
