"""In-process pieces of the proxy path: body parsing, prompt estimate, audit redaction, fleet table."""

import json

import pytest

from server.edge.errors import InvalidRequest
from server.edge.protocol import ChatCompletionRequest, CompletionRequest
from server.router.audit import AuditLog, redact
from server.router.cli import fleet_table
from server.router.proxy import estimate_prompt_tokens, parse_body


def test_parse_body_rejects_bad_json_shapes():
    for raw, message in ((b"{", "not valid JSON"), (b"[]", "must be a JSON object"), (b"\xff\xfe", "not valid JSON"),
                         (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
                         (b'{"a":' * 100000 + b"1" + b"}" * 100000, "nested too deeply")):
        with pytest.raises(InvalidRequest, match=message):
            parse_body(raw, ChatCompletionRequest)
    with pytest.raises(InvalidRequest, match="'temperature'") as nan:
        parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
                   ChatCompletionRequest)
    assert nan.value.param == "temperature"
    with pytest.raises(InvalidRequest, match="'base_url' is not accepted"):
        parse_body(b'{"model": "m", "prompt": "x", "base_url": "http://elsewhere"}', CompletionRequest)
    req = parse_body(b'{"model": "m", "prompt": "hello"}', CompletionRequest)
    assert req.prompt == "hello" and req.model == "m"


def test_prompt_estimate():
    chat = parse_body(json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 4000}]}).encode(),
                         ChatCompletionRequest)
    assert 1000 <= estimate_prompt_tokens(chat) <= 1010
    ids = parse_body(b'{"model": "m", "prompt": [1, 2, 3]}', CompletionRequest)
    assert estimate_prompt_tokens(ids) == 3


def test_audit_redacts_and_omits_prompts(tmp_path):
    path = tmp_path / "a.jsonl"
    log = AuditLog(str(path), log_prompts=False)
    log.write({"request_id": "r1"}, prompt=[{"role": "user", "content": "secret prompt"}])
    log.close()
    assert "secret prompt" not in path.read_text()
    assert redact({"Authorization": "Bearer x", "a": [{"api_key": "k"}]}) == {
        "Authorization": "[redacted]", "a": [{"api_key": "[redacted]"}]}


def test_fleet_table_renders():
    from rich.console import Console

    doc = {"policy": "nearest_idle", "score": "s", "nodes": [
        {"name": "a", "url": "http://a:1", "zone": None, "health": "open", "simulated": True, "capacity": None,
         "rtt_ms": None, "score_ms": None, "inflight": 0}]}
    console = Console(record=True, width=200)
    console.print(fleet_table(doc))
    text = console.export_text()
    assert "a (sim)" in text and "open" in text


def test_metrics_count_each_outcome_once():
    from prometheus_client import generate_latest

    from server.router.metrics import RouterMetrics

    m = RouterMetrics()
    for node, status in (("a", 200), ("a", 200), ("b", 503), ("a", 499)):
        m.observe(node, status, 0.02)
    text = generate_latest(m.registry).decode()
    assert 'edgefleet_router_requests_total{node="a",status="200"} 2.0' in text
    assert 'edgefleet_router_requests_total{node="b",status="503"} 1.0' in text
    assert 'edgefleet_router_requests_total{node="a",status="499"} 1.0' in text
    assert "edgefleet_router_request_seconds_count 4.0" in text


def test_request_ids_are_unique_and_shaped_like_before():
    from server.router.core import new_request_id

    ids = [new_request_id() for _ in range(10000)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("rt-") and len(i) == 27 and int(i[3:], 16) >= 0 for i in ids)
