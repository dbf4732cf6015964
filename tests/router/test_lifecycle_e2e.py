"""Real router and sim node processes: the audit log (off the loop, never failing a request,
reopened on SIGHUP, rejections audited), SIGTERM draining, SIGHUP reload of keys, admin
scope (RELIABILITY B4, G4, H4) and one request id through router and node."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from server.edge.security import hash_key
from tests.router.conftest import wait_until

pytestmark = pytest.mark.e2e

MODEL = "sim-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _post(url: str, body: dict = CHAT, **headers: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30, trust_env=False)


def _metric(router_url: str, name: str, **headers: str) -> float:
    text = httpx.get(router_url + "/metrics", headers=headers, timeout=5, trust_env=False).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.fixture(scope="module")
def node(launcher):
    return launcher.node("life-a", model=MODEL, decode_ms=20, prefill_tokens_per_s=1e6)


def test_a_full_disk_never_fails_a_request_and_is_counted(launcher, node):
    router = launcher.router("--node", node.url, "--audit-log", "/dev/full", name="router-full")
    for _ in range(3):
        resp = _post(router.url)
        assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]
    assert wait_until(lambda: _metric(router.url, "edgefleet_router_audit_write_errors_total") >= 3, 5)
    assert router.alive()
    router.stop()
    assert router.log.read_text().count("audit log: cannot write") == 1  # warned once


def test_sighup_reopens_the_audit_log_and_rejections_are_audited(launcher, node, tmp_path):
    audit = tmp_path / "audit.jsonl"
    router = launcher.router("--node", node.url, "--audit-log", str(audit), "--api-key", "client-k",
                             name="router-hup")
    assert _post(router.url, authorization="Bearer client-k").status_code == 200
    assert _post(router.url, authorization="Bearer wrong").status_code == 401
    assert wait_until(lambda: len(_lines(audit)) == 2, 5)
    ok, denied = _lines(audit)
    assert ok["status"] == 200 and ok["outcome"] == "ok" and ok["key_id"] == "default" and ok["client"] == "127.0.0.1"
    assert denied["status"] == 401 and denied["error"] == "invalid_api_key" and denied["client"] == "127.0.0.1"
    rotated = tmp_path / "audit.jsonl.1"
    audit.rename(rotated)
    os.kill(router.pid, signal.SIGHUP)
    time.sleep(0.3)
    assert _post(router.url, authorization="Bearer client-k").status_code == 200
    assert wait_until(lambda: len(_lines(audit)) == 1, 5), "the line after SIGHUP went to the old file"
    assert len(_lines(rotated)) == 2 and router.alive()


def test_sigterm_drains_then_ends_streams_in_band(launcher, node, tmp_path):
    audit = tmp_path / "drain.jsonl"
    router = launcher.router("--node", node.url, "--audit-log", str(audit), "--shutdown-timeout", "1.5",
                             name="router-drain")
    body = {**CHAT, "max_tokens": 2000, "stream": True, "ignore_eos": True}  # 20 ms a token: 40 s
    lines: list[str] = []
    first = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=60,
                          trust_env=False) as resp:
            for line in resp.iter_lines():
                lines.append(line)
                first.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(10)
    t0 = time.monotonic()
    router.popen.send_signal(signal.SIGTERM)
    assert wait_until(lambda: httpx.get(router.url + "/ready", timeout=2, trust_env=False).status_code == 503, 1)
    late = _post(router.url)
    assert late.status_code == 503 and late.json()["error"]["code"] == "server_shutting_down"
    reader.join(15)
    took = time.monotonic() - t0
    assert router.popen.wait(10) == 0
    assert 1.4 < took < 6, took
    data = [ln for ln in lines if ln.startswith("data: ")]
    assert "data: [DONE]" not in data
    last = json.loads(data[-1][6:])
    assert last["error"]["code"] == "server_shutting_down"
    record = next(r for r in _lines(audit) if r.get("stream"))
    assert record["error"] == "server_shutting_down" and record["outcome"] == "server_shutting_down"
    assert 0 < record["completion_tokens"] < 2000  # what was relayed, not what was asked


def test_sighup_reloads_keys_without_dropping_a_stream(launcher, node, tmp_path):
    fleet = tmp_path / "fleet.toml"

    def write(*keys: str) -> None:
        fleet.write_text("".join(f'[[keys]]\nid = "{k}"\nhash = "{hash_key(k + "-secret")}"\n' for k in keys))

    write("alice", "bob")
    router = launcher.router("--node", node.url, "--fleet", str(fleet), name="router-reload")
    assert _post(router.url, authorization="Bearer alice-secret").status_code == 200
    body = {**CHAT, "max_tokens": 60, "stream": True, "ignore_eos": True}
    result: dict = {}

    def consume() -> None:
        with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=60, trust_env=False,
                          headers={"authorization": "Bearer alice-secret"}) as resp:
            result["lines"] = list(resp.iter_lines())

    reader = threading.Thread(target=consume)
    reader.start()
    time.sleep(0.3)
    write("bob")  # alice revoked
    os.kill(router.pid, signal.SIGHUP)
    assert wait_until(lambda: _post(router.url, authorization="Bearer alice-secret").status_code == 401, 5)
    assert _post(router.url, authorization="Bearer bob-secret").status_code == 200
    reader.join(20)
    assert "data: [DONE]" in result["lines"], "the stream in flight was dropped by the reload"


def test_client_keys_do_not_see_fleet_internals(launcher, node):
    router = launcher.router("--node", node.url, "--api-key", "client-k", "--admin-key", "admin-k",
                             name="router-scopes")
    client, admin = {"authorization": "Bearer client-k"}, {"authorization": "Bearer admin-k"}
    for path in ("/v1/fleet", "/v1/fleet/nodes/life-a", "/metrics"):
        resp = httpx.get(router.url + path, headers=client, timeout=5, trust_env=False)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_required", path
        assert httpx.get(router.url + path, headers=admin, timeout=5, trust_env=False).status_code == 200, path
    pick = httpx.get(router.url + "/v1/fleet/pick", params={"model": MODEL}, headers=client, timeout=5,
                     trust_env=False).json()
    assert pick["node"] == "life-a" and pick["base_url"] is None
    pick = httpx.get(router.url + "/v1/fleet/pick", params={"model": MODEL}, headers=admin, timeout=5,
                     trust_env=False).json()
    assert pick["base_url"] == node.url + "/v1"
    assert _post(router.url, **client).status_code == 200
    assert _post(router.url, **admin).status_code == 200
    mine = httpx.get(router.url + "/v1/usage", headers=client, timeout=5, trust_env=False).json()["keys"]
    every = httpx.get(router.url + "/v1/usage", headers=admin, timeout=5, trust_env=False).json()["keys"]
    assert set(mine) == {"default"} and set(every) == {"default", "admin"}


def test_one_request_id_in_router_and_node(launcher, tmp_path):
    node = launcher.node("life-rid", model="rid-model", extra=["--log-level", "debug"])
    audit = tmp_path / "rid.jsonl"
    router = launcher.router("--node", node.url, "--audit-log", str(audit), name="router-rid")
    resp = _post(router.url, {**CHAT, "model": "rid-model"})
    assert resp.status_code == 200
    rid = resp.headers["x-request-id"]
    assert rid.startswith("rt-") and resp.json()["id"] == f"chatcmpl-{rid}"
    assert wait_until(lambda: rid in node.log.read_text(), 5), "the node's log does not carry the router's id"
    assert wait_until(lambda: any(r["request_id"] == rid for r in _lines(audit)), 5)
    # A client's own id is not trusted by the router (it makes its own); a node keeps a sane one only.
    direct = httpx.post(node.url + "/v1/chat/completions", json={**CHAT, "model": "rid-model"},
                        headers={"x-request-id": "bad id with spaces"}, timeout=10, trust_env=False)
    assert "bad id" not in direct.json()["id"]


def test_node_drain_runs_on_the_shared_lifecycle_code(launcher):
    """The node's SIGTERM drain (server/lifecycle.py, shared with the router) on a sim node."""
    node = launcher.node("life-drain", model=MODEL, decode_ms=20, extra=["--shutdown-timeout", "1"])
    body = {**CHAT, "max_tokens": 2000, "stream": True, "ignore_eos": True}
    lines: list[str] = []
    first = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", node.url + "/v1/chat/completions", json=body, timeout=60, trust_env=False) as r:
            for line in r.iter_lines():
                lines.append(line)
                first.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(10)
    node.popen.send_signal(signal.SIGTERM)
    assert wait_until(lambda: httpx.get(node.url + "/ready", timeout=2, trust_env=False).status_code == 503, 2)
    reader.join(15)
    assert node.popen.wait(10) == 0
    data = [ln for ln in lines if ln.startswith("data: ")]
    assert "data: [DONE]" not in data and json.loads(data[-1][6:])["error"]["code"] == "server_shutting_down"
