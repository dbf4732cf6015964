"""The capacity document and /metrics on a real node under load."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.capacity.schema import SCHEMA_VERSION, Capacity
from tests.conftest import CONTEXT, DEMO
from tests.nodeproc import hold_slots

pytestmark = pytest.mark.e2e


def cap(node, **params) -> dict:
    r = httpx.get(node.url + "/v1/capacity", headers=node.headers, params=params, timeout=10)
    assert r.status_code == 200
    Capacity.model_validate(r.json())  # the document matches its schema
    return r.json()


def test_identity_models_and_cpu_accelerator(node):
    doc = cap(node)
    assert doc["schema_version"] == SCHEMA_VERSION
    ident = doc["identity"]
    assert ident["name"] == "e2e-node" and ident["zone"] == "test" and ident["labels"] == {"rack": "1"}
    assert ident["engine"] == node.engine and ident["simulated"] is False and len(ident["node_id"]) >= 8
    assert doc["state"] == "ready"
    (model,) = doc["models"]
    assert model["id"] == DEMO and model["max_model_len"] == CONTEXT and model["random_weights"] is True
    assert doc["cpu_only"] is True
    (acc,) = doc["accelerators"]
    assert acc["kind"] == "cpu" and acc["memory_total_bytes"] > 0
    assert doc["load"]["kv_total_tokens"] > 0 and doc["load"]["max_concurrent_sequences"] == 4


def test_capacity_moves_under_load_and_settles(node):
    before = cap(node)
    holders = hold_slots(node, DEMO, 3, prompt="hello " * 50, max_tokens=CONTEXT - 100)
    busy = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            doc = cap(node)
            if doc["load"]["running"] >= 3:
                busy = doc
                break
            time.sleep(0.05)
    finally:
        for h in holders:
            h.release()
    assert not any(h.finished or h.error for h in holders), [(h.error, h.tail) for h in holders]
    assert busy is not None, f"running count never reached 3: {doc['load']}"
    assert busy["idle"] is False and busy["load"]["kv_cache_usage"] > 0
    assert busy["load"]["kv_free_tokens"] < busy["load"]["kv_total_tokens"]
    assert busy["admission"]["in_flight"] == 3
    for _ in range(3):  # requests that finish feed the recent-latency window
        r = httpx.post(node.url + "/v1/completions", headers=node.headers, timeout=60,
                       json={"model": DEMO, "prompt": "hello " * 50, "max_tokens": 16, "ignore_eos": True})
        assert r.status_code == 200
    time.sleep(0.5)
    after = cap(node, prompt_tokens=100, max_tokens=10)
    assert after["idle"] is True and after["load"]["running"] == 0
    perf = after["performance"]
    assert perf["requests"] >= before["performance"]["requests"] + 3
    assert perf["ttft_p50_ms"] > 0 and perf["tpot_p50_ms"] > 0 and perf["prefill_tokens_per_s"] > 0
    pred = after["prediction"]
    assert pred["would_admit"] is True and pred["predicted_ttft_ms"] > 0 and "recent window" in pred["reason"]
    refuse = cap(node, prompt_tokens=CONTEXT - 50, max_tokens=100)["prediction"]
    assert refuse["would_admit"] is False and "max_model_len" in refuse["reason"]


def test_metrics_parse_with_vllm_names(node):
    httpx.post(node.url + "/v1/completions", headers=node.headers, timeout=60,
               json={"model": DEMO, "prompt": "hi", "max_tokens": 5})
    text = httpx.get(node.url + "/metrics", headers=node.headers, timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                 "vllm:e2e_request_latency_seconds", "edgefleet_node_state",
                 "edgefleet_accelerator_memory_total_bytes"):
        assert name in families, name
    ttft_count = [s.value for s in families["vllm:time_to_first_token_seconds"].samples
                  if s.name.endswith("_count")]
    assert ttft_count and ttft_count[0] >= 1
    state = {s.labels["state"]: s.value for s in families["edgefleet_node_state"].samples}
    assert state["ready"] == 1 and state["draining"] == 0


def test_capacity_cli_prints_readably(node):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "edgefleet"
    out = subprocess.run([str(exe), "capacity", node.url, "--api-key", node.api_key, "--prompt-tokens", "50"],
                         capture_output=True, text=True, timeout=60, env={"COLUMNS": "160", "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr
    assert "e2e-node" in out.stdout and DEMO in out.stdout and "random weights" in out.stdout
    assert "would admit" in out.stdout


def test_llm_d_model_server_protocol_priority_and_cached_tokens(node):
    """Every engine: the metrics llm-d's endpoint picker scrapes, the cache section, priority
    accepted (and passed to the engine's scheduler), and prefix-cache hits in usage."""
    body = {"model": DEMO, "prompt": "the shared context of one agent session " * 12, "max_tokens": 2}
    usages = []
    for prio in ("-3", "7"):
        r = httpx.post(node.url + "/v1/completions", headers={**node.headers, "X-Edgefleet-Priority": prio},
                       timeout=60, json=body)
        assert r.status_code == 200, r.text
        usages.append(r.json()["usage"])
    assert usages[0]["prompt_tokens_details"]["cached_tokens"] == 0
    doc = cap(node)
    assert doc["cache"]["prefix_caching"] is True and doc["cache"]["block_size"] > 0
    assert 0 < usages[1]["prompt_tokens_details"]["cached_tokens"] < usages[1]["prompt_tokens"]
    assert usages[1]["prompt_tokens_details"]["cached_tokens"] % doc["cache"]["block_size"] == 0
    bad = httpx.post(node.url + "/v1/completions", headers=node.headers, timeout=60, json={**body, "priority": 1000})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "priority"
    text = httpx.get(node.url + "/metrics", headers=node.headers, timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                 "vllm:cache_config_info", "vllm:lora_requests_info"):
        assert families[name].type == "gauge", name
    (info,) = families["vllm:cache_config_info"].samples
    assert info.value == 1 and info.labels["block_size"] == str(doc["cache"]["block_size"])
    assert int(info.labels["num_gpu_blocks"]) * doc["cache"]["block_size"] == doc["load"]["kv_total_tokens"]
    (lora,) = families["vllm:lora_requests_info"].samples
    assert lora.labels["max_lora"] == "0" and lora.value > 1.6e9
