"""RELIABILITY H1-H3 on real processes: a sim node, routers restarted on one state directory,
and two routers sharing a real redis-server."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time

import httpx
import pytest

from server.edge.security import hash_key
from tests.nodeproc import free_port
from tests.router.conftest import fleet, wait_until

pytestmark = pytest.mark.e2e

BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "count"}], "max_tokens": 24}
AUTH = {"authorization": "Bearer alice-key"}
ADMIN = {"authorization": "Bearer ops-key"}  # /v1/fleet is for admin keys


def finished(node) -> int:
    """Generations the node finished (its vllm:request_success counter)."""
    text = httpx.get(node.url + "/metrics", trust_env=False, timeout=5).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total")))


def post(router, key: str | None, body=BODY, stream=False, timeout=30):
    headers = {**AUTH, **({"idempotency-key": key} if key is not None else {})}
    return httpx.post(router.url + "/v1/chat/completions", json={**body, "stream": stream}, headers=headers,
                      timeout=timeout, trust_env=False)


@pytest.fixture(scope="module")
def node(launcher):
    return launcher.node("idem-node", decode_ms=25)


@pytest.fixture(scope="module")
def fleet_file(launcher):
    path = launcher.tmp / "fleet.toml"
    path.write_text(f'[[keys]]\nid = "alice"\nhash = "{hash_key("alice-key")}"\n'
                    f'[[keys]]\nid = "bob"\nhash = "{hash_key("bob-key")}"\nrequests_per_min = 3\n'
                    f'[[keys]]\nid = "ops"\nhash = "{hash_key("ops-key")}"\nadmin = true\n')
    return path


def start_router(launcher, node, fleet_file, *args, name="router"):
    r = launcher.router("--node", node.url, "--fleet", str(fleet_file), "--poll-interval", "0.2",
                        "--limits-flush-interval", "0.2", *args, name=name)
    assert wait_until(lambda: all(n["ready"] for n in fleet(r, **ADMIN)["nodes"]))
    return r


@pytest.fixture(scope="module")
def state(launcher):
    return launcher.tmp / "state"


@pytest.fixture(scope="module")
def router(launcher, node, fleet_file, state):
    return start_router(launcher, node, fleet_file, "--state-dir", str(state))


def test_h1_sequential_retry_runs_once_and_returns_the_same_response(router, node):
    before = finished(node)
    a = post(router, "seq-1")
    b = post(router, "seq-1")
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json() and a.json()["id"].startswith("chatcmpl")
    assert b.headers["idempotency-replayed"] == "true" and "idempotency-replayed" not in a.headers
    assert a.headers["x-request-id"] == b.headers["x-request-id"]
    assert wait_until(lambda: finished(node) == before + 1)
    time.sleep(0.3)
    assert finished(node) == before + 1
    c = post(router, None)  # no key: runs every time
    assert c.json()["id"] != a.json()["id"]


def test_h1_concurrent_senders_share_one_generation(router, node):
    before = finished(node)

    async def burst():
        async with httpx.AsyncClient(trust_env=False, timeout=30) as c:
            return await asyncio.gather(*[c.post(router.url + "/v1/chat/completions", json=BODY,
                                                 headers={**AUTH, "idempotency-key": "conc-1"}) for _ in range(4)])
    replies = asyncio.run(burst())
    assert {r.status_code for r in replies} == {200}
    assert len({r.content for r in replies}) == 1
    assert sum("idempotency-replayed" in r.headers for r in replies) == 3
    time.sleep(0.3)
    assert finished(node) == before + 1


def test_h1_streaming_retry_attaches_replays_and_continues(router, node):
    before = finished(node)
    body = {**BODY, "max_tokens": 40}
    first: list[bytes] = []
    with httpx.Client(trust_env=False, timeout=30) as c:
        with c.stream("POST", router.url + "/v1/chat/completions", json={**body, "stream": True},
                      headers={**AUTH, "idempotency-key": "stream-1"}) as r1:
            it = r1.iter_raw()
            while b"data: {" not in b"".join(first):
                first.append(next(it))
            # mid-stream: a retry attaches
            r2 = post(router, "stream-1", body=body, stream=True)
            first.extend(it)
    one, two = b"".join(first), r2.content
    assert r2.status_code == 200 and r2.headers["idempotency-replayed"] == "true"
    assert one == two and one.rstrip().endswith(b"data: [DONE]") and one.count(b"data: {") >= 40
    time.sleep(0.3)
    assert finished(node) == before + 1
    later = post(router, "stream-1", body=body, stream=True)  # after it ended: the stored transcript
    assert later.content == one


def test_h2_same_key_other_body_is_refused_and_runs_nothing(router, node):
    assert post(router, "h2-key").status_code == 200
    before = finished(node)
    r = post(router, "h2-key", body={**BODY, "max_tokens": 5})
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"
    r = httpx.post(router.url + "/v1/completions", json={"model": "sim-model", "prompt": "x"},
                   headers={**AUTH, "idempotency-key": "h2-key"}, trust_env=False, timeout=10)
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"
    bad = post(router, "x" * 256)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_idempotency_key"
    time.sleep(0.3)
    assert finished(node) == before


def test_h3_restart_keeps_results_limits_and_usage(launcher, node, fleet_file, state, router):
    first = post(router, "restart-1")
    assert first.status_code == 200
    bob = {"authorization": "Bearer bob-key"}
    url = router.url + "/v1/chat/completions"
    assert [httpx.post(url, json=BODY, headers=bob, trust_env=False, timeout=30).status_code
            for _ in range(3)] == [200, 200, 200]  # bob's whole minute (3 requests) is spent
    usage = httpx.get(router.url + "/v1/usage", headers=AUTH, trust_env=False).json()["keys"]["alice"]
    time.sleep(0.6)  # past one flush interval: the limit state is in the store
    os.kill(router.pid, signal.SIGKILL)
    router.popen.wait(5)
    again = start_router(launcher, node, fleet_file, "--state-dir", str(state), name="router-2")
    before = finished(node)
    r = post(again, "restart-1")
    assert r.status_code == 200 and r.json() == first.json() and r.headers["idempotency-replayed"] == "true"
    assert finished(node) == before
    after = httpx.get(again.url + "/v1/usage", headers=AUTH, trust_env=False).json()["keys"]["alice"]
    assert after["requests"] >= usage["requests"] and after["completion_tokens"] >= usage["completion_tokens"]
    # bob's rate window survived: his fourth request within the minute is refused
    r = httpx.post(again.url + "/v1/chat/completions", json=BODY, headers=bob, trust_env=False, timeout=30)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert httpx.get(again.url + "/v1/usage", headers=bob, trust_env=False).json()["keys"]["bob"]["requests"] == 3
    again.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
    port = free_port()
    tmp = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def up() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        assert wait_until(up, timeout=10), "redis-server did not start"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_store_shared_by_two_routers(launcher, node, fleet_file, redis_url):
    a = start_router(launcher, node, fleet_file, "--store", redis_url, name="redis-a")
    b = start_router(launcher, node, fleet_file, "--store", redis_url, name="redis-b")
    before = finished(node)
    one = post(a, "shared-1")
    assert one.status_code == 200
    time.sleep(0.2)
    two = post(b, "shared-1")
    assert two.status_code == 200 and two.json() == one.json() and two.headers["idempotency-replayed"] == "true"
    assert post(b, "shared-1", body={**BODY, "max_tokens": 3}).json()["error"]["code"] == "idempotency_key_reused"
    time.sleep(0.3)
    assert finished(node) == before + 1
    a.stop()
    b.stop()


def test_node_honours_the_key_itself(node):
    before = finished(node)
    url = node.url + "/v1/chat/completions"
    r1 = httpx.post(url, json=BODY, headers={"idempotency-key": "node-1"}, trust_env=False, timeout=30)
    r2 = httpx.post(url, json=BODY, headers={"idempotency-key": "node-1"}, trust_env=False, timeout=30)
    assert r1.status_code == 200 and r1.json() == r2.json() and r2.headers["idempotency-replayed"] == "true"
    r3 = httpx.post(url, json={**BODY, "max_tokens": 2}, headers={"idempotency-key": "node-1"}, trust_env=False)
    assert r3.status_code == 422 and r3.json()["error"]["code"] == "idempotency_key_reused"
    time.sleep(0.3)
    assert finished(node) == before + 1


def test_node_stream_retry_gets_the_same_transcript(node):
    before = finished(node)
    url = node.url + "/v1/chat/completions"
    body = {**BODY, "stream": True, "max_tokens": 12}

    async def both():
        async with httpx.AsyncClient(trust_env=False, timeout=30) as c:
            first = asyncio.create_task(c.post(url, json=body, headers={"idempotency-key": "node-s1"}))
            await asyncio.sleep(0.1)  # mid-generation
            second = await c.post(url, json=body, headers={"idempotency-key": "node-s1"})
            return await first, second
    one, two = asyncio.run(both())
    assert one.status_code == two.status_code == 200 and one.content == two.content
    assert one.content.rstrip().endswith(b"data: [DONE]") and two.headers["idempotency-replayed"] == "true"
    time.sleep(0.3)
    assert finished(node) == before + 1
