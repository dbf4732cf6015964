"""RELIABILITY.md sections A (validation), B (auth and browser attacks) and C (overload,
disconnects) against a real node process. The A-cases run twice: against the node, and
through a router process in front of that same node ("node and router alike")."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import CONTEXT, DEMO, NODE_KEY
from tests.nodeproc import hold_slots
from tests.router.conftest import Launcher

pytestmark = pytest.mark.e2e
MSGS = [{"role": "user", "content": "hi"}]
ROUTER_KEY = "router-client-key-0123456789"


@dataclass(slots=True)
class Front:
    """A router process in front of the shared node, seen as the A-cases see a node."""
    url: str
    port: int
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture(scope="session")
def routed(node, tmp_path_factory):
    """One router per shared node (a cheap process; no second engine), with a client key."""
    launch = Launcher(tmp_path_factory.mktemp(f"router-{node.engine}"))
    fleet_file = launch.tmp / "fleet.toml"
    fleet_file.write_text(f'[[nodes]]\nurl = "{node.url}"\napi_key = "{NODE_KEY}"\n')
    try:
        proc = launch.router("--fleet", str(fleet_file), "--poll-interval", "0.5", "--api-key", ROUTER_KEY)
        yield Front(proc.url, int(proc.url.rsplit(":", 1)[1]), ROUTER_KEY)
    finally:
        launch.close()


@pytest.fixture(params=["node", "router"])
def target(request, node):
    """What an A-case talks to: the node itself, or the router in front of it."""
    return node if request.param == "node" else request.getfixturevalue("routed")


def post(node, body=None, *, raw: bytes | str | None = None, path="/v1/chat/completions", headers=None):
    h = {"content-type": "application/json", **node.headers, **(headers or {})}
    content = raw if raw is not None else json.dumps(body)
    return httpx.post(node.url + path, content=content, headers=h, timeout=60)


def assert_error(r: httpx.Response, status: int, *, param: str | None = "", code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["code"], str) and err["message"]
    assert "Traceback" not in r.text and " at 0x" not in r.text
    if param != "":
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def chat(**kw) -> dict:
    return {"model": DEMO, "messages": MSGS, "max_tokens": 4, **kw}


# --- A. request validation ---------------------------------------------------------------

def test_a1_prompt_plus_max_tokens_over_context(target):
    too_many = CONTEXT + 1000
    err = assert_error(post(target, chat(max_tokens=too_many)), 400, param="max_tokens", code="context_length_exceeded")
    assert str(CONTEXT) in err["message"] and str(too_many) in err["message"]


def test_a2_prompt_alone_over_context_is_refused_not_truncated(target):
    long = [{"role": "user", "content": "hello " * (CONTEXT + 1000)}]
    assert_error(post(target, chat(messages=long, max_tokens=None)), 400, code="context_length_exceeded")
    r = post(target, {"model": DEMO, "prompt": "hello " * (CONTEXT + 1000)}, path="/v1/completions")
    assert_error(r, 400, code="context_length_exceeded")


@pytest.mark.parametrize("value", [0, -1, 10**12, "10", 1.5])
def test_a3_bad_max_tokens(target, value):
    assert_error(post(target, chat(max_tokens=value)), 400, param="max_tokens")


@pytest.mark.parametrize("raw", ["-0.1", "2.5", "NaN", "Infinity", "-Infinity"])
def test_a4_bad_temperature(target, raw):
    body = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": %s}' % (DEMO, raw)
    assert_error(post(target, raw=body), 400, param="temperature")


def test_a5_top_p(target):
    assert_error(post(target, chat(top_p=0)), 400, param="top_p")
    assert_error(post(target, chat(top_p=1.5)), 400, param="top_p")
    assert post(target, chat(top_p=1.0)).status_code == 200


def test_a6_n(target):
    assert_error(post(target, chat(n=0)), 400, param="n")
    assert_error(post(target, chat(n=9)), 400, param="n")


@pytest.mark.parametrize("raw", ['{"model": "x", "messages": [', "[1, 2, 3]", '{"model": 5, "messages": "hi"}',
                                 '"just a string"', "null", ""])
def test_a7_malformed_json_is_400_never_422(target, raw):
    err = assert_error(post(target, raw=raw), 400)
    assert err["type"] == "invalid_request_error"


def test_a8_wrong_content_type_is_415(target):
    r = post(target, raw=json.dumps(chat()), headers={"content-type": "text/plain"})
    assert_error(r, 415, code="unsupported_media_type")


def test_a9_unknown_model(target):
    assert_error(post(target, chat(model="no-such-model")), 404, param="model", code="model_not_found")
    r = post(target, {"model": "no-such-model", "prompt": "x"}, path="/v1/completions")
    assert_error(r, 404, code="model_not_found")


@pytest.mark.parametrize("messages, param", [
    ([], "messages"),
    ([{"role": "wizard", "content": "x"}], "messages[0].role"),
    ([{"role": "tool", "content": "x"}], "messages[0]"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}], "messages[0].content"),
])
def test_a10_bad_messages_name_the_param(target, messages, param):
    err = assert_error(post(target, chat(messages=messages)), 400)
    assert err["param"] is not None and err["param"].startswith(param.split(".")[0])


def test_a11_huge_declared_body_is_refused_before_reading(target):
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Authorization: " + target.headers["Authorization"].encode()
                  + b"\r\nContent-Length: 52428800\r\n\r\n")
        s.sendall(b"{" * 1024)
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def test_a11_huge_chunked_body_is_cut_off(target):
    def chunks():
        for _ in range(50):
            yield b"x" * (1 << 20)

    r = httpx.post(target.url + "/v1/chat/completions", content=chunks(), timeout=30,
                   headers={"content-type": "application/json", **target.headers})
    assert_error(r, 413, code="request_too_large")
    assert post(target, chat()).status_code == 200


@pytest.mark.parametrize("headers", [
    [("X-Big", "a" * (1 << 20))],
    [(f"X-H{i}", "v") for i in range(10_000)],
])
def test_a12_oversized_headers_are_431(target, headers):
    req = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as s:
        s.sendall(req)
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:100]
    assert httpx.get(target.url + "/health", timeout=10).status_code == 200  # still up


def test_a13_bad_unicode(target):
    r = post(target, raw=b'{"model": "x", "messages": [{"role": "user", "content": "\xff\xfe"}]}')
    assert_error(r, 400)
    lone = '{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}' % DEMO
    assert_error(post(target, raw=lone), 400)
    r = post(target, chat(messages=[{"role": "user", "content": "a\u0000b"}]))
    assert r.status_code == 200, r.text  # NUL is a valid character: served, never a 500
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_a14_stop_strings(target):
    assert_error(post(target, chat(stop=["x"] * 1000)), 400, param="stop")
    assert_error(post(target, chat(stop=[""])), 400, param="stop")


def test_a15_logit_bias(target):
    assert_error(post(target, chat(logit_bias={"abc": 1})), 400, param="logit_bias")
    assert_error(post(target, chat(logit_bias={"5": 1000})), 400, param="logit_bias")
    assert_error(post(target, chat(logit_bias={str(i): 1 for i in range(100_000)})), 400, param="logit_bias")


@pytest.mark.parametrize("body", [
    chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
         tool_choice="required"),
    chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}}}),
    chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}),
    chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
])
def test_a16_broken_schemas_then_next_request_succeeds(target, body):
    assert_error(post(target, body), 400)
    assert_error(post(target, {**body, "stream": True}), 400)
    assert post(target, chat()).status_code == 200


def test_a17_tool_choice(target):
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert_error(post(target, chat(tools=tools, tool_choice={"type": "function", "function": {"name": "g"}})), 400)
    assert_error(post(target, chat(tool_choice="required")), 400)


def test_a18_deep_nesting(target):
    assert_error(post(target, raw="[" * 10_000 + "]" * 10_000), 400)
    deep = '{"model": "%s", "messages": %s}' % (DEMO, "[" * 10_000 + "]" * 10_000)
    assert_error(post(target, raw=deep), 400)
    schema = '{"type": "object", "properties": {"a": ' * 3000 + "{}" + "}}" * 3000
    body = '{"model": "%s", "messages": [{"role": "user", "content": "x"}], "response_format": ' \
           '{"type": "json_schema", "json_schema": {"name": "x", "schema": %s}}}' % (DEMO, schema)
    assert_error(post(target, raw=body), 400)


@pytest.mark.parametrize("field, value", [
    ("chat_template", "{{ 'pwned' }}"), ("chat_template_kwargs", {"x": 1}), ("logits_processors", ["os.system"]),
    ("api_base", "http://evil.example"), ("base_url", "http://evil.example"),
])
def test_a19_operator_fields_are_rejected(target, field, value):
    assert_error(post(target, chat(**{field: value})), 400)


# --- B. auth and browser attacks ---------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/models", "/v1/capacity", "/metrics", "//v1/models", "/v1%2Fmodels",
                                  "/V1/models", "/v1/models/", "/docs", "/openapi.json", "/nope"])
def test_b1_every_route_needs_the_key(node, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + NODE_KEY},
                    {"Authorization": "Bearer " + NODE_KEY[:-1]}):
        r = httpx.get(node.url + path, headers=headers, timeout=10)
        assert r.status_code == 401, (path, headers, r.status_code)
        assert NODE_KEY not in r.text
    r = httpx.post(node.url + "/v1/chat/completions", json=chat(), timeout=10)
    assert_error(r, 401, code="invalid_api_key")


def test_b1_health_and_ready_are_open(node):
    assert httpx.get(node.url + "/health", timeout=10).status_code == 200
    assert httpx.get(node.url + "/ready", timeout=10).status_code == 200
    assert httpx.get(node.url + "/v1/models", headers=node.headers, timeout=10).status_code == 200


@pytest.mark.parametrize("headers", [{"Host": "evil.example"}, {"Origin": "https://evil.example"},
                                     {"Host": "evil.example:8000"}, {"Origin": "null"}])
def test_b2_dns_rebinding_guard(node, headers):
    r = httpx.get(node.url + "/v1/models", headers={**node.headers, **headers}, timeout=10)
    assert_error(r, 403)
    ok = httpx.get(node.url + "/v1/models", headers={**node.headers, "Origin": f"http://localhost:{node.port}"},
                   timeout=10)
    assert ok.status_code == 200


def test_b4_key_never_in_logs(node):
    httpx.get(node.url + "/v1/models", headers={"Authorization": "Bearer wrong-" + NODE_KEY}, timeout=10)
    assert NODE_KEY not in node.read_log()


# --- C. overload and disconnects -----------------------------------------------------------

def _capacity(node) -> dict:
    return httpx.get(node.url + "/v1/capacity", headers=node.headers, timeout=10).json()


def _wait_idle(node, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cap = _capacity(node)
        if cap["idle"] and cap["admission"]["in_flight"] == 0 and cap["load"]["running"] == 0:
            return cap
        time.sleep(0.2)
    raise AssertionError(f"node not idle: {cap}")


def test_c2_full_queue_answers_503_with_retry_after(node):
    _wait_idle(node)
    # max_num_seqs 4 + max_queued_requests 4: eight fit, the ninth is refused.
    holders = hold_slots(node, DEMO, 8, max_tokens=CONTEXT - 16)
    try:
        deadline = time.monotonic() + 30
        while (cap := _capacity(node))["admission"]["in_flight"] < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cap["admission"]["in_flight"] == 8, cap
        r = post(node, chat())
        assert not any(h.error for h in holders), [h.error for h in holders]
        assert not any(h.finished for h in holders), [h.tail for h in holders if h.finished]
        err = assert_error(r, 503, code="server_overloaded")
        assert int(r.headers["Retry-After"]) >= 1 and "retry" in err["message"].lower()
    finally:
        for h in holders:
            h.release()
    _wait_idle(node)
    assert post(node, chat()).status_code == 200


def test_c3_disconnect_mid_stream_aborts_and_frees_kv(node):
    _wait_idle(node)
    with httpx.stream("POST", node.url + "/v1/completions", headers=node.headers, timeout=60,
                      json={"model": DEMO, "prompt": "hello", "max_tokens": 1000, "stream": True,
                            "ignore_eos": True}) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
        busy = _capacity(node)
        assert busy["load"]["running"] == 1 and busy["load"]["kv_cache_usage"] > 0 and not busy["idle"]
    t0 = time.monotonic()
    cap = _wait_idle(node, timeout=10)
    assert time.monotonic() - t0 < 5
    assert cap["load"]["kv_cache_usage"] == 0.0


def test_c3_disconnect_non_streaming_aborts(node):
    _wait_idle(node)
    with pytest.raises(httpx.ReadTimeout):
        post_timeout = httpx.Timeout(60, read=1.5)
        httpx.post(node.url + "/v1/completions", headers={**node.headers, "content-type": "application/json"},
                   timeout=post_timeout, content=json.dumps({"model": DEMO, "prompt": "hi", "max_tokens": 1000,
                                                             "ignore_eos": True}))
    _wait_idle(node, timeout=10)


def test_c4_disconnect_while_queued_is_never_run(node):
    _wait_idle(node)
    before = httpx.get(node.url + "/metrics", headers=node.headers, timeout=10).text
    holders = hold_slots(node, DEMO, 4, max_tokens=CONTEXT - 16)
    try:
        deadline = time.monotonic() + 30
        while _capacity(node)["load"]["running"] < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(node.url + "/v1/completions", headers={**node.headers, "content-type": "application/json"},
                       timeout=httpx.Timeout(30, read=1.0),
                       content=json.dumps({"model": DEMO, "prompt": "queued", "max_tokens": 5}))
        deadline = time.monotonic() + 15  # the disconnect is noticed within a poll, not instantly
        while (cap := _capacity(node))["admission"]["in_flight"] > 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [h.status for h in holders] == [200] * 4, [h.error for h in holders]
        assert not any(h.finished for h in holders), [h.tail for h in holders if h.finished]
        assert cap["admission"]["in_flight"] == 4 and cap["admission"]["queued"] == 0, cap["admission"]
    finally:
        for h in holders:
            h.release()
    _wait_idle(node)
    after = httpx.get(node.url + "/metrics", headers=node.headers, timeout=10).text
    # The four holders were ended by their clients (abort); had the queued request run, it
    # would have finished with "length" (5 tokens of random weights) or "stop".
    completed = sum(_count(after, f'finished_reason="{r}"') - _count(before, f'finished_reason="{r}"')
                    for r in ("length", "stop"))
    assert completed == 0
    assert _count(after, 'finished_reason="abort"') - _count(before, 'finished_reason="abort"') >= 4


def _count(metrics_text: str, label: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("vllm:request_success_total") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
