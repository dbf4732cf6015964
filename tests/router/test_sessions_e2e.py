"""Sessions, prefix-aware routing and priority through a real router over two sim nodes."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from server.edge.security import hash_key
from tests.router.conftest import fleet, wait_until

pytestmark = pytest.mark.e2e

KEY = "sessions-client-key"
SYSTEM = "You are a careful coding agent. " * 250  # ~2000 simulated tokens: 2 s of prefill


@pytest.fixture(scope="module")
def setup(launcher):
    a = launcher.node("sess-a", prefill_tokens_per_s=1000, decode_ms=5, wait=False)
    b = launcher.node("sess-b", prefill_tokens_per_s=1000, decode_ms=5, wait=False)
    from tests.router.conftest import wait_http
    for n in (a, b):
        wait_http(n.url + "/ready", n.popen, n.log)
    fleet_file = launcher.tmp / "sessions.toml"
    fleet_file.write_text(f'''
[router]
poll_interval = 0.2

[[nodes]]
url = "{a.url}"

[[nodes]]
url = "{b.url}"

[[keys]]
id = "agent"
hash = "{hash_key(KEY)}"
priority_default = 5
priority_min = 0
admin = true                  # this test reads /v1/fleet and /metrics with it
''')
    audit = launcher.tmp / "sessions.audit.jsonl"
    router = launcher.router("--fleet", str(fleet_file), "--audit-log", str(audit), name="sess-router",
                             wait_ready=False)
    auth = {"authorization": f"Bearer {KEY}"}
    assert wait_until(lambda: all(n["ready"] for n in fleet(router, **auth)["nodes"]) and
                      len(fleet(router, **auth)["nodes"]) == 2, timeout=20)
    return router, audit


def oa(router, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0, default_headers=headers)


def audit_lines(audit) -> list[str]:
    return audit.read_text().splitlines() if audit.exists() else []


def next_audit_line(audit, before: int) -> dict:
    """The newest audit line once there are more than ``before``: the router writes them on
    its own thread, after the response."""
    assert wait_until(lambda: len(audit_lines(audit)) > before, timeout=10)
    return json.loads(audit_lines(audit)[-1])


def pick(router, messages, session="agent-run-1") -> dict:
    return httpx.post(router.url + "/v1/fleet/pick", json={"model": "sim-model", "messages": messages},
                      headers={"authorization": f"Bearer {KEY}", "X-Edgefleet-Session": session},
                      trust_env=False).json()


def test_a_chain_goes_where_its_context_is_and_reports_correct_the_estimate(setup):
    router, audit = setup
    c = oa(router, **{"X-Edgefleet-Session": "agent-run-1"})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fix the parser."}]

    def step(k: int) -> str:
        raw = c.chat.completions.with_raw_response.create(model="sim-model", messages=messages, max_tokens=4)
        messages.extend([{"role": "assistant", "content": raw.parse().choices[0].message.content},
                         {"role": "user", "content": f"tool result {k}: " + "ok " * 100}])
        return raw.headers["x-edgefleet-node"]

    first = step(0)
    p = pick(router, messages)
    # The step-1 prompt (~2000 tokens) is a prefix of step 2: 2 s of prefill saved there.
    assert p["node"] == first and p["predicted_cached_tokens"] >= 1500
    assert [e["predicted_cached_tokens"] for e in p["alternatives"]] == [0]
    assert p["session"] and "agent-run-1" not in json.dumps(p)
    before = len(audit_lines(audit))
    assert step(1) == first
    last = next_audit_line(audit, before)
    assert last["session"] == p["session"] and last["predicted_cached_tokens"] >= 1500
    assert last["priority"] == 5  # the key's default
    assert "agent-run-1" not in audit.read_text()
    after = pick(router, messages)
    if last["cached_tokens"]:  # an engine with a prefix cache: the chain keeps its node
        assert after["node"] == first and after["predicted_cached_tokens"] > p["predicted_cached_tokens"]
    else:  # the node said it cached nothing: the router stops believing it holds the context
        assert last["cached_tokens"] == 0
        assert after["predicted_cached_tokens"] == 0
        assert all(e["predicted_cached_tokens"] == 0 for e in after["alternatives"])
    metrics = httpx.get(router.url + "/metrics", headers={"authorization": f"Bearer {KEY}"}, trust_env=False).text
    assert f'edgefleet_router_reported_cached_tokens_total{{node="{first}"}}' in metrics
    assert f'edgefleet_router_predicted_cached_tokens_total{{node="{first}"}}' in metrics


def test_priority_is_clamped_to_the_key_limit(setup):
    router, audit = setup
    before = len(audit_lines(audit))
    raw = oa(router).chat.completions.with_raw_response.create(
        model="sim-model", messages=[{"role": "user", "content": "urgent"}], max_tokens=2, extra_body={"priority": -20})
    assert raw.headers["x-edgefleet-priority-clamped"] == "0"
    assert next_audit_line(audit, before)["priority"] == 0
    before = len(audit_lines(audit))
    raw = oa(router, **{"X-Edgefleet-Priority": "7"}).chat.completions.with_raw_response.create(
        model="sim-model", messages=[{"role": "user", "content": "batch"}], max_tokens=2)
    assert "x-edgefleet-priority-clamped" not in raw.headers
    assert next_audit_line(audit, before)["priority"] == 7


def test_bad_session_and_priority_are_400(setup):
    router, _ = setup
    with pytest.raises(openai.BadRequestError) as e:
        oa(router, **{"X-Edgefleet-Session": "x" * 257}).chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert e.value.body["param"] == "X-Edgefleet-Session"
    with pytest.raises(openai.BadRequestError) as e:
        oa(router, **{"X-Edgefleet-Priority": "high"}).chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert "-100 to 100" in e.value.message


@pytest.fixture(scope="module")
def one_slot(launcher):
    """Two sim nodes with one sequence slot each and slow decode: a few background
    requests make a node's queue wait seconds long, longer than re-prefilling a chain."""
    from tests.router.conftest import wait_http
    # --max-num-seqs, not the sim option: the node's own TTFT prediction counts slots from it.
    nodes = [launcher.node(f"slot-{x}", prefill_tokens_per_s=1000, decode_ms=20, decode_ms_per_seq=0,
                           extra=["--max-num-seqs", "1"], wait=False) for x in "ab"]
    for n in nodes:
        wait_http(n.url + "/ready", n.popen, n.log)
    router = launcher.router(*[a for n in nodes for a in ("--node", n.url)], "--poll-interval", "0.2",
                             "--admin-key", KEY, name="slot-router", wait_ready=False)
    auth = {"authorization": f"Bearer {KEY}"}
    assert wait_until(lambda: len(fleet(router, **auth)["nodes"]) == 2 and
                      all(n["ready"] for n in fleet(router, **auth)["nodes"]), timeout=20)
    return router, {n.name: n for n in nodes}


def test_a_chain_stays_with_its_context_until_that_node_is_overloaded_then_moves(one_slot):
    router, nodes = one_slot
    c = oa(router, **{"X-Edgefleet-Session": "agent-run-move"})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Refactor the lexer."}]

    def step(k: int) -> str:
        raw = c.chat.completions.with_raw_response.create(model="sim-model", messages=messages, max_tokens=4)
        messages.extend([{"role": "assistant", "content": raw.parse().choices[0].message.content},
                         {"role": "user", "content": f"tool result {k}: " + "ok " * 100}])
        return raw.headers["x-edgefleet-node"]

    auth = {"authorization": f"Bearer {KEY}"}

    def idle_seen() -> bool:
        # A poll can catch the node while it retires the step the router just relayed (it
        # still counts it running): that is a one-slot wait, not an idle fleet. The claim
        # below is about an idle fleet, so wait until the router's view says so.
        return all(n["capacity"]["load"]["running"] + n["capacity"]["load"]["waiting"] == 0
                   for n in fleet(router, **auth)["nodes"])

    holder = step(0)
    assert holder in nodes
    for k in (1, 2):  # idle fleet: the ~2000 cached tokens keep the chain there
        assert wait_until(idle_seen, timeout=10)
        assert step(k) == holder, k

    # Load the holder behind the router's back: six requests decoding 100 tokens (2 s) each
    # through its only slot. The node predicts a slot wait of one recent mean request per
    # request ahead, more than re-prefilling ~2300 tokens on the idle node.
    busy = nodes[holder]
    background = [threading.Thread(target=httpx.post, args=(busy.url + "/v1/chat/completions",),
                                   kwargs={"json": {"model": "sim-model", "max_tokens": 100,
                                                    "messages": [{"role": "user", "content": f"batch job {i}"}]},
                                           "timeout": 90, "trust_env": False})
                  for i in range(6)]
    for t in background:
        t.start()

    def holder_overloaded() -> bool:
        cap = next(n for n in fleet(router, **auth)["nodes"] if n["name"] == holder).get("capacity") or {}
        # Queued work the router has seen, and a predicted wait well past the idle node's
        # re-prefill of the whole prompt (~2.3 s at its prior 1000 tokens/s).
        return cap["load"]["waiting"] >= 2 and cap["prediction"]["predicted_queue_wait_ms"] > 3500

    assert wait_until(holder_overloaded, timeout=20)
    moved = step(3)
    assert moved != holder and moved in nodes
    for t in background:
        t.join(90)
    assert not any(t.is_alive() for t in background)
    # The chain's context is now on the node it moved to, and that node is idle: it stays.
    assert step(4) == moved
