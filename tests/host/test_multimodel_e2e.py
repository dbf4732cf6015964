"""Several models on one real node (native engine, CPU), and a router that knows warm from cold.

One node hosts three entries from a TOML config: the demo model (pinned), a second tiny
fixture (keep_alive 0) and "big" (the second fixture's weights with a KV cache too large to
sit beside the pinned demo model under --memory-budget). A second node hosts the same
fixture cold, and a router fronts both.
"""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from server.demo_model import TinyLlamaSpec, build_llama_dir
from tests.nodeproc import NodeProcess
from tests.router.conftest import Launcher, wait_until

pytestmark = pytest.mark.e2e
DEMO = "edgefleet-demo-random"
SECOND = "tiny-second"


def chat(url: str, model: str, headers: dict | None = None, timeout: float = 120.0,
         max_tokens: int = 3) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=headers or {}, timeout=timeout, trust_env=False,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
                            "ignore_eos": True})


def states(url: str) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(url + "/v1/capacity", timeout=10, trust_env=False).json()["models"]}


@pytest.fixture(scope="module")
def second_dir(tmp_path_factory) -> Path:
    return build_llama_dir(tmp_path_factory.mktemp("second"), TinyLlamaSpec(hidden_size=128, intermediate_size=256,
                                                                              seed=7), model_id=SECOND)


@pytest.fixture(scope="module")
def host_node(tmp_path_factory, demo_model_dir, second_dir):
    tmp = tmp_path_factory.mktemp("host")
    cfg = tmp / "node.toml"
    cfg.write_text(f"""
engine = "native"
max_model_len = 512
kv_cache_gb = 0.05
keep_alive = "5m"
memory_budget = "200MiB"

[[models]]
model = "{demo_model_dir}"
pinned = true

[[models]]
model = "{second_dir}"
keep_alive = 0

[[models]]
model = "{second_dir}"
name = "big"
kv_cache_gb = 0.15
""")
    proc = NodeProcess("--config", str(cfg), "--state-dir", str(tmp / "state"), "--name", "host-a",
                       log_path=tmp / "node.log")
    try:
        proc.wait_ready(timeout=120)
        yield proc
    finally:
        proc.stop()


def test_models_listed_with_state_and_pinned_loaded_at_start(host_node):
    models = httpx.get(host_node.url + "/v1/models", timeout=10).json()["data"]
    by = {m["id"]: m for m in models}
    assert set(by) == {DEMO, SECOND, "big"}
    assert by[DEMO]["state"] == "loaded" and by[DEMO]["pinned"]
    assert by[SECOND]["state"] == "unloaded" and by[SECOND]["keep_alive_s"] == 0


def test_concurrent_first_requests_share_one_load_then_keep_alive_0_unloads(host_node):
    # All four leave together, and each decodes long enough that none has finished (and
    # keep_alive 0 has not unloaded the model) before the last arrives, even on a loaded box.
    gate = threading.Barrier(4)

    def first_request(_: int) -> httpx.Response:
        gate.wait(30)
        return chat(host_node.url, SECOND, max_tokens=48)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(first_request, range(4)))
    assert [r.status_code for r in answers] == [200] * 4
    assert all(r.json()["model"] == SECOND for r in answers)
    log = host_node.read_log()
    assert log.count(f"loading {SECOND} ") == 1  # one load for four first requests
    # keep_alive 0: unloaded once the last request ended (memory: see the in-process test below)
    assert wait_until(lambda: states(host_node.url)[SECOND]["state"] == "unloaded", timeout=10)
    s = states(host_node.url)[SECOND]
    assert s["load_s"] is not None and s["load_s"] < 10 and "keep_alive" in s["state_reason"]
    # the pinned model never unloads
    assert states(host_node.url)[DEMO]["state"] == "loaded"
    assert chat(host_node.url, DEMO).status_code == 200


def test_a_model_that_does_not_fit_is_refused_and_the_others_serve(host_node):
    r = chat(host_node.url, "big")
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "model_load_failed" and "big" in err["message"] and DEMO in err["message"]
    assert "pinned" in err["message"]
    s = states(host_node.url)["big"]
    assert s["state"] == "failed" and "pinned" in s["state_reason"]
    assert chat(host_node.url, DEMO).status_code == 200
    assert chat(host_node.url, SECOND).status_code == 200
    assert host_node.proc.poll() is None


def test_metrics_label_every_model_and_count_each_ones_requests(host_node):
    before = httpx.get(host_node.url + "/metrics", timeout=10).text
    assert chat(host_node.url, DEMO).status_code == 200
    text = httpx.get(host_node.url + "/metrics", timeout=10).text

    def count(body: str, model: str) -> float:
        line = next((x for x in body.splitlines()
                     if x.startswith(f'vllm:e2e_request_latency_seconds_count{{model_name="{model}"}}')), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    assert count(text, DEMO) == count(before, DEMO) + 1
    for model in (DEMO, SECOND, "big"):  # every model's engine gauges, loaded or not
        assert f'vllm:num_requests_running{{model_name="{model}"}}' in text
    assert text.count("# TYPE edgefleet_node_state gauge") == 1


async def test_unload_returns_the_engine_and_its_memory(tmp_path, second_dir):
    """In-process, the real native engine: after keep_alive 0 the engine object is gone (its
    weights and KV cache with it) and its stepping thread has ended."""
    import asyncio
    import gc
    import threading
    import weakref

    from server.config import NodeSettings
    from server.host import ModelHost
    from server.host_config import build_specs

    base = NodeSettings(engine="native", max_model_len=512, kv_cache_gb=0.05, state_dir=tmp_path)
    host = ModelHost(base, build_specs(base, [str(second_dir)], None, [], 0), budget_bytes=1 << 30)
    await host.start_engine()
    runtime = await host.acquire(SECOND)
    engine = weakref.ref(runtime.engine)
    assert any(t.name == "native-engine" for t in threading.enumerate())
    runtime.begin("r", ["r-0"], 1, 0.0)
    runtime.end("r", "stop")
    del runtime
    for _ in range(100):
        await asyncio.sleep(0.05)
        if host.slots[SECOND].state == "unloaded":
            break
    gc.collect()
    assert host.slots[SECOND].state == "unloaded"
    assert engine() is None
    assert not any(t.name == "native-engine" for t in threading.enumerate())
    await host.stop()


def test_unknown_model_is_404(host_node):
    r = chat(host_node.url, "no-such-model")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert DEMO not in r.json()["error"]["message"]


def test_router_sends_warm_model_to_the_warm_node(tmp_path, demo_model_dir, second_dir):
    launch = Launcher(tmp_path)
    nodes = []
    try:
        for name in ("warm", "cold"):
            proc = NodeProcess("--engine", "native", "--model", str(demo_model_dir), "--model", str(second_dir),
                               "--max-model-len", "512", "--kv-cache-gb", "0.05", "--keep-alive", "-1",
                               "--state-dir", str(tmp_path / name), "--name", name, log_path=tmp_path / f"{name}.log")
            nodes.append(proc)
        for proc in nodes:
            proc.wait_ready(timeout=120)
        warm, cold = nodes
        assert chat(warm.url, SECOND).status_code == 200  # loads it on the warm node only
        router = launch.router("--node", warm.url, "--node", cold.url, "--poll-interval", "0.2")
        assert wait_until(lambda: httpx.get(router.url + "/v1/models", timeout=5).json()["data"] and all(
            m["states"] == {"warm": "loaded", "cold": "unloaded"}
            for m in httpx.get(router.url + "/v1/models", timeout=5).json()["data"] if m["id"] == SECOND), timeout=20)
        served_by = []
        for _ in range(4):
            r = chat(router.url, SECOND)
            assert r.status_code == 200
            served_by.append(r.headers["x-edgefleet-node"])
        assert served_by == ["warm"] * 4
        assert states(cold.url)[SECOND]["state"] == "unloaded"  # nobody paid for a cold start
        # pre-warm: the router asks the node it would pick; the model is already warm there
        r = httpx.post(router.url + "/v1/fleet/warm", json={"model": SECOND, "wait": True}, timeout=60)
        assert r.status_code == 200 and r.json()["node"] == "warm" and r.json()["action"] == "none"
        # a model cold everywhere is still served, and warming it loads it on one node
        r = httpx.post(router.url + "/v1/fleet/warm", json={"model": DEMO, "wait": True}, timeout=60)
        assert r.status_code == 200 and r.json()["state"] == "loaded"
        loaded_on = [p for p in nodes if states(p.url)[DEMO]["state"] == "loaded"]
        assert [p.url for p in loaded_on] == [{"warm": warm, "cold": cold}[r.json()["node"]].url]
    finally:
        launch.close()
        for proc in nodes:
            proc.stop()


def test_sigterm_during_a_load_abandons_it_and_exits(tmp_path):
    """A simulated engine that takes 30 s to load: SIGTERM mid-load ends the load, the waiting
    client gets 503 draining, and the node exits 0 at once."""
    cfg = tmp_path / "node.toml"
    cfg.write_text('engine = "sim"\n[[models]]\nname = "fast"\n'
                   '[[models]]\nname = "slow"\nengine_options = { load_s = 30 }\n')
    proc = NodeProcess("--config", str(cfg), "--state-dir", str(tmp_path / "state"), log_path=tmp_path / "node.log")
    try:
        proc.wait_ready(timeout=60, model="fast")
        assert chat(proc.url, "fast").status_code == 200
        result: dict = {}
        client = threading.Thread(target=lambda: result.update(r=chat(proc.url, "slow", timeout=60)))
        client.start()
        assert wait_until(lambda: states(proc.url)["slow"]["state"] == "loading", timeout=10)
        t0 = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0
        assert time.monotonic() - t0 < 10
        client.join(10)
        r = result["r"]
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
    finally:
        proc.stop()
