"""The router in front of real sim-node processes, driven by the official openai client."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import openai
import pytest

from tests.router.conftest import fleet, wait_until

pytestmark = pytest.mark.e2e

LONG_PROMPT = "edge " * 1600  # ~2000 simulated tokens: prefill speed decides


@pytest.fixture(scope="module")
def nodes(launcher):
    fast = launcher.node("fast", prefill_tokens_per_s=40000, decode_ms=5, decode_ms_per_seq=0.2, wait=False)
    slow = launcher.node("slow", prefill_tokens_per_s=1000, decode_ms=30, decode_ms_per_seq=1, wait=False, extra=["--zone", "attic"])
    other = launcher.node("other", model="other-model", wait=False)
    from tests.router.conftest import wait_http
    for n in (fast, slow, other):
        wait_http(n.url + "/ready", n.popen, n.log)
    return fast, slow, other


@pytest.fixture(scope="module")
def router(launcher, nodes):
    fast, slow, other = nodes
    r = launcher.router("--node", fast.url, "--node", slow.url, "--node", other.url, "--poll-interval", "0.2",
                        "--seed", "7", "--audit-log", str(launcher.tmp / "audit.jsonl"))
    assert wait_until(lambda: all(n["ready"] for n in fleet(r)["nodes"]))
    return r


def client(router, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="unused", default_headers=headers, max_retries=0)


def test_models_is_the_union_and_every_response_names_a_node(router):
    c = client(router)
    assert sorted(m.id for m in c.models.list().data) == ["other-model", "sim-model"]
    raw = c.chat.completions.with_raw_response.create(
        model="other-model", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert raw.headers["x-edgefleet-node"] == "other"
    assert raw.parse().choices[0].message.content == " tok tok tok"
    r = httpx.get(router.url + "/v1/models", trust_env=False)
    assert r.headers["x-edgefleet-node"] == "router"
    with pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    assert info.value.response.headers["x-edgefleet-node"] == "router"


def test_streaming_relays_every_event(router):
    stream = client(router).chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " tok" * 8
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_completions_endpoint(router):
    out = client(router).completions.create(model="sim-model", prompt="hello", max_tokens=4)
    assert out.choices[0].text == " tok" * 4


def test_invalid_requests_are_rejected_at_the_router(router):
    bad = [
        {"model": "sim-model", "messages": []},
        {"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "api_base": "http://evil"},
    ]
    for body in bad:
        r = httpx.post(router.url + "/v1/chat/completions", json=body, trust_env=False)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    for raw in (b'{"model": "sim-model", "temperature": NaN, "messages": [{"role":"user","content":"x"}]}',
                b"[1, 2]", b'{"model": ', b"[" * 10000 + b"]" * 10000):
        r = httpx.post(router.url + "/v1/chat/completions", content=raw,
                       headers={"content-type": "application/json"}, trust_env=False)
        assert r.status_code == 400, raw[:40]
    r = httpx.post(router.url + "/v1/chat/completions", content=b"x", headers={"content-type": "text/plain"},
                   trust_env=False)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_oversized_bodies_are_refused_by_the_router_declared_or_chunked(router):
    """RELIABILITY A11 at the router: the proxy path reads the body itself, so the limit
    must still hold there, and the next request must still succeed."""
    big = b'{"model": "sim-model", "messages": [{"role": "user", "content": "' + b"x" * (5 << 20) + b'"}]}'
    headers = {"content-type": "application/json"}

    def pieces():
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    for content in (big, pieces()):
        r = httpx.post(router.url + "/v1/chat/completions", content=content, headers=headers, trust_env=False)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(router.url + "/v1/chat/completions", trust_env=False)
    assert r.status_code == 405
    ok = client(router).chat.completions.create(model="sim-model", max_tokens=2,
                                                messages=[{"role": "user", "content": "still here"}])
    assert ok.choices[0].message.content


def test_nearest_idle_learns_the_fast_node(router):
    c = client(router)
    served = Counter()
    for _ in range(12):
        raw = c.chat.completions.with_raw_response.create(
            model="sim-model", messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=2)
        served[raw.headers["x-edgefleet-node"]] += 1
    assert served["fast"] >= 9, (served, [(n["name"], n["health"], n["ready"], n["score_ms"], n["last_error"])
                                          for n in fleet(router)["nodes"]])
    doc = fleet(router)
    scores = {n["name"]: n["score_ms"] for n in doc["nodes"]}
    assert scores["fast"] < scores["slow"]


async def test_burst_is_spread_not_herded(launcher):
    """Two identical idle nodes and a router that will not poll during the burst: its own
    dispatch counts must spread the burst instead of piling it onto the node that looked
    best at the last poll (a stale signal herds)."""
    from tests.router.conftest import wait_http

    twins = [launcher.node(f"twin-{x}", wait=False, prefill_tokens_per_s=2000, decode_ms=10) for x in "ab"]
    for t in twins:
        wait_http(t.url + "/ready", t.popen, t.log)
    r = launcher.router("--node", twins[0].url, "--node", twins[1].url, "--poll-interval", "5",
                        "--audit-log", str(launcher.tmp / "twins.audit.jsonl"), name="r-twins")
    assert wait_until(lambda: sum(n["ready"] for n in fleet(r)["nodes"]) == 2, timeout=15)
    time.sleep(max(0.0, 1.0 - fleet(r)["nodes"][0]["capacity_age_s"]))  # burst right after a poll
    c = openai.AsyncOpenAI(base_url=r.url + "/v1", api_key="unused", max_retries=0)

    async def one():
        raw = await c.chat.completions.with_raw_response.create(
            model="sim-model", messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=4)
        return raw.headers["x-edgefleet-node"]

    names = Counter(await asyncio.gather(*(one() for _ in range(40))))
    assert 12 <= names["twin-a"] <= 28 and names["twin-a"] + names["twin-b"] == 40, names
    await c.close()


def test_pin_and_zone_hints(router):
    c = client(router, **{"X-Edgefleet-Node": "slow"})
    for _ in range(3):
        raw = c.chat.completions.with_raw_response.create(
            model="sim-model", messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=1)
        assert raw.headers["x-edgefleet-node"] == "slow"
    c = client(router, **{"X-Edgefleet-Zone": "attic"})
    raw = c.chat.completions.with_raw_response.create(
        model="sim-model", messages=[{"role": "user", "content": "x"}], max_tokens=1)
    assert raw.headers["x-edgefleet-node"] == "slow"
    with pytest.raises(openai.NotFoundError):
        client(router, **{"X-Edgefleet-Node": "nowhere"}).chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "x"}], max_tokens=1)


def test_fleet_view_and_pick(router):
    doc = fleet(router)
    by_name = {n["name"]: n for n in doc["nodes"]}
    assert set(by_name) == {"fast", "slow", "other"}
    fast = by_name["fast"]
    assert fast["health"] == "closed" and fast["simulated"] is True and fast["rtt_ms"] is not None
    assert fast["capacity"]["identity"]["simulated"] is True
    assert by_name["slow"]["zone"] == "attic"
    pick = httpx.get(router.url + "/v1/fleet/pick", params={"model": "sim-model", "prompt_tokens": 4000},
                     trust_env=False).json()
    assert pick["node"] == "fast" and pick["base_url"].endswith("/v1") and "predicted TTFT" in pick["reason"]
    metrics = httpx.get(router.url + "/metrics", trust_env=False).text
    assert "edgefleet_router_requests_total" in metrics and 'edgefleet_router_node_up{node="fast"} 1.0' in metrics


def test_audit_log_lines(router, launcher):
    import json

    lines = [json.loads(x) for x in (launcher.tmp / "audit.jsonl").read_text().splitlines()]
    assert len(lines) >= 10
    ok = [x for x in lines if x["status"] == 200]
    assert ok and all({"request_id", "key_id", "model", "node", "latency_ms", "prompt_tokens"} <= set(x) for x in ok)
    assert not any("prompt" in x for x in lines)  # no prompt text without --log-prompts
    assert all("edge edge" not in json.dumps(x) for x in lines)


def test_fleet_cli_table(router):
    import subprocess

    from tests.router.conftest import EDGEFLEET
    out = subprocess.run([EDGEFLEET, "fleet", router.url], capture_output=True, text=True, timeout=30,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "fast" in out.stdout and "slow" in out.stdout and "closed" in out.stdout
