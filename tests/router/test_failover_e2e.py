"""Router faults (RELIABILITY E1-E5, C2, C3) with real sim-node processes killed or stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.router.conftest import fleet, free_port, wait_http, wait_until

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def backup(launcher):
    """A healthy node every test can fail over to."""
    return launcher.node("backup", decode_ms=5)


def start_nodes(launcher, *specs):
    procs = [launcher.node(name, wait=False, extra=extra, **opts) for name, extra, opts in specs]
    for p in procs:
        wait_http(p.url + "/ready", p.popen, p.log)
    return procs


def node_view(router, name):
    return next(n for n in fleet(router)["nodes"] if n["name"] == name)


def audit(launcher, router_name):
    path = launcher.tmp / f"{router_name}.audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_node_killed_mid_stream_gives_in_band_error(launcher, backup):
    """E1: in-band SSE error event, no [DONE], no replay; node marked down; next request elsewhere."""
    (victim,) = start_nodes(launcher, ("victim1", ["--zone", "z1"], {"decode_ms": 20}))
    router = launcher.router("--node", victim.url, "--node", backup.url, "--poll-interval", "0.3", name="r1")
    body = {"model": "sim-model", "messages": MSG, "max_tokens": 2000, "stream": True}
    events = []
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=30, trust_env=False,
                      headers={"X-Edgefleet-Zone": "z1"}) as resp:
        assert resp.headers["x-edgefleet-node"] == "victim1"
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 5:
                    os.kill(victim.pid, signal.SIGKILL)
    assert "[DONE]" not in events
    err = json.loads(events[-1])
    assert err["error"]["code"] == "upstream_disconnected" and err["error"]["type"] == "server_error"
    content_events = [e for e in events[:-1] if '"choices"' in e]
    assert 5 <= len(content_events) < 2000  # what arrived was relayed once, nothing replayed
    assert node_view(router, "victim1")["health"] == "open"
    c = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0,
                      default_headers={"X-Edgefleet-Zone": "z1"})
    raw = c.chat.completions.with_raw_response.create(model="sim-model", messages=MSG, max_tokens=2)
    assert raw.headers["x-edgefleet-node"] == "backup"


def test_refused_connection_before_first_byte_fails_over(launcher, backup):
    """E2: the router has not noticed the node died; the request moves to the next node."""
    (victim,) = start_nodes(launcher, ("victim2", ["--zone", "z2"], {}))
    router = launcher.router("--node", victim.url, "--node", backup.url, "--poll-interval", "60",
                             "--audit-log", str(launcher.tmp / "r2.audit.jsonl"), name="r2")
    victim.popen.kill()
    victim.popen.wait()
    c = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0,
                      default_headers={"X-Edgefleet-Zone": "z2"})
    stream = c.chat.completions.with_raw_response.create(model="sim-model", messages=MSG, max_tokens=3, stream=True)
    assert stream.headers["x-edgefleet-node"] == "backup"
    assert "".join(ch.choices[0].delta.content or "" for ch in stream.parse() if ch.choices) == " tok" * 3
    assert wait_until(lambda: audit(launcher, "r2"), timeout=10)  # written on the router's own thread
    line = audit(launcher, "r2")[-1]
    assert line["attempts"] == ["victim2:connect_error", "backup:ok"] and line["status"] == 200
    assert node_view(router, "victim2")["health"] == "open"


def test_node_that_accepts_tcp_but_never_answers(launcher, backup):
    """E3: first-byte timeout, failover; other requests are unaffected meanwhile."""
    (victim,) = start_nodes(launcher, ("victim3", ["--zone", "z3"], {}))
    router = launcher.router("--node", victim.url, "--node", backup.url, "--poll-interval", "60",
                             "--first-byte-timeout", "1.5", name="r3")
    os.kill(victim.pid, signal.SIGSTOP)  # the kernel still accepts connections; nothing answers
    try:
        other = {}

        def unaffected():
            time.sleep(0.2)
            t0 = time.monotonic()
            r = httpx.post(router.url + "/v1/chat/completions", json={"model": "sim-model", "messages": MSG,
                           "max_tokens": 1}, headers={"X-Edgefleet-Node": "backup"}, timeout=10, trust_env=False)
            other["status"], other["s"] = r.status_code, time.monotonic() - t0

        t = threading.Thread(target=unaffected)
        t.start()
        t0 = time.monotonic()
        r = httpx.post(router.url + "/v1/chat/completions", json={"model": "sim-model", "messages": MSG,
                       "max_tokens": 2, "stream": True}, headers={"X-Edgefleet-Zone": "z3"}, timeout=20,
                       trust_env=False)
        elapsed = time.monotonic() - t0
        assert r.text.rstrip().endswith("data: [DONE]")
        t.join()
        assert r.status_code == 200 and r.headers["x-edgefleet-node"] == "backup"
        assert 1.4 <= elapsed < 5.0
        assert other["status"] == 200 and other["s"] < 1.0
    finally:
        os.kill(victim.pid, signal.SIGCONT)


class BusyNode:
    """A node that reports itself ready (a real node's capacity document, renamed) but answers
    every completion with 503 server_overloaded + Retry-After, like a node whose queue is full."""

    def __init__(self, capacity: dict, status: int = 503):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        capacity = json.loads(json.dumps(capacity))
        capacity["identity"].update(name="busy", node_id="busy-node", zone="z4")
        doc = json.dumps(capacity).encode()
        err = json.dumps({"error": {"message": "Queue is full", "type": "server_error", "param": None,
                                    "code": "server_overloaded"}}).encode()
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, body, extra=()):
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, doc)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.posts += 1
                self._send(status, err, [("retry-after", "3")])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [503, 429])
def test_overloaded_node_moves_request(launcher, backup, status):
    """C2/E2: a node answering 503 (queue full) or 429 before the first byte: retry on the next node."""
    cap = httpx.get(backup.url + "/v1/capacity", trust_env=False).json()
    busy = BusyNode(cap, status)
    name = f"r4-{status}"
    try:
        router = launcher.router("--node", busy.url, "--node", backup.url, "--poll-interval", "60",
                                 "--audit-log", str(launcher.tmp / f"{name}.audit.jsonl"), name=name)
        c = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0,
                          default_headers={"X-Edgefleet-Zone": "z4"})
        raw = c.chat.completions.with_raw_response.create(model="sim-model", messages=MSG, max_tokens=2)
        assert raw.headers["x-edgefleet-node"] == "backup" and busy.posts == 1
        assert wait_until(lambda: audit(launcher, name), timeout=10)  # written on the router's own thread
        assert audit(launcher, name)[-1]["attempts"] == [f"busy:http_{status}", "backup:ok"]
        # Pinned to the busy node there is nowhere to go: the client sees 503 with Retry-After.
        r = httpx.post(router.url + "/v1/chat/completions", json={"model": "sim-model", "messages": MSG},
                       headers={"X-Edgefleet-Node": "busy"}, trust_env=False)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_overloaded"
        assert r.headers["retry-after"] == "3"
    finally:
        busy.close()


def test_every_node_down_is_503_no_healthy_node(launcher):
    """E4."""
    dead = f"http://127.0.0.1:{free_port()}"
    router = launcher.router("--node", dead, "--poll-interval", "0.2", wait_ready=False, name="r5")
    assert httpx.get(router.url + "/ready", trust_env=False).status_code == 503
    c = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(model="sim-model", messages=MSG, max_tokens=1)
    # A node that never answered might serve the model: 503, not 404.
    assert info.value.status_code == 503 and info.value.code == "no_healthy_node"
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_known_model_but_every_node_down(launcher):
    (only,) = start_nodes(launcher, ("lonely", [], {}))
    router = launcher.router("--node", only.url, "--poll-interval", "0.2", "--failure-threshold", "1", name="r6")
    only.popen.kill()
    only.popen.wait()
    assert wait_until(lambda: node_view(router, "lonely")["health"] == "open")
    r = httpx.post(router.url + "/v1/chat/completions", json={"model": "sim-model", "messages": MSG},
                   trust_env=False)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_node"
    assert int(r.headers["retry-after"]) >= 1


def test_flapping_node_circuit_breaker(launcher, backup):
    """E5: open after N failed polls, half-open probing, closed after M successes."""
    (flappy,) = start_nodes(launcher, ("flappy", [], {}))
    router = launcher.router("--node", flappy.url, "--node", backup.url, "--poll-interval", "0.2",
                             "--failure-threshold", "2", "--success-threshold", "3", "--open-seconds", "0.5",
                             name="r7")
    assert node_view(router, "flappy")["health"] == "closed"
    os.kill(flappy.pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: node_view(router, "flappy")["health"] == "open", timeout=20)
        trips = node_view(router, "flappy")["trips"]
        # Still stopped: half-open probes fail and re-open it.
        assert wait_until(lambda: node_view(router, "flappy")["trips"] > trips, timeout=20)
    finally:
        os.kill(flappy.pid, signal.SIGCONT)
    seen = set()
    assert wait_until(lambda: seen.add(node_view(router, "flappy")["health"]) or
                      node_view(router, "flappy")["health"] == "closed", timeout=10, step=0.02)
    assert "half_open" in seen


def test_client_disconnect_cancels_upstream(launcher):
    """C3 through the router: the node stops generating and the router's counters return to 0."""
    (node,) = start_nodes(launcher, ("cancel8", [], {"decode_ms": 10}))
    router = launcher.router("--node", node.url, "--poll-interval", "0.2", name="r8")
    body = {"model": "sim-model", "messages": MSG, "max_tokens": 3000, "stream": True}
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=30, trust_env=False) as resp:
        lines = resp.iter_lines()
        for _ in range(5):
            next(lines)
        load = httpx.get(node.url + "/v1/capacity", trust_env=False).json()["load"]
        assert load["running"] == 1
    assert wait_until(lambda: httpx.get(node.url + "/v1/capacity", trust_env=False).json()["load"]["running"] == 0,
                      timeout=5)
    assert wait_until(lambda: node_view(router, "cancel8")["inflight"] == 0, timeout=5)


def test_full_real_node_503_moves_request(launcher, backup):
    """C2 with a real node whose only slot is busy and whose queue is 0: 503, retried elsewhere."""
    (full,) = start_nodes(launcher, ("full9", ["--zone", "z9", "--max-num-seqs", "1", "--max-queued-requests", "0"],
                                     {"decode_ms": 20, "max_num_seqs": 1}))
    router = launcher.router("--node", full.url, "--node", backup.url, "--poll-interval", "60",
                             "--audit-log", str(launcher.tmp / "r9.audit.jsonl"), name="r9")
    body = {"model": "sim-model", "messages": MSG, "max_tokens": 300, "stream": True}
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=30, trust_env=False,
                      headers={"X-Edgefleet-Node": "full9"}) as hog:
        lines = hog.iter_lines()  # keep a reference: a dropped generator closes the stream
        next(lines)
        r = httpx.post(router.url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2},
                       headers={"X-Edgefleet-Zone": "z9"}, timeout=20, trust_env=False)
        assert r.status_code == 200 and r.headers["x-edgefleet-node"] == "backup"
    # (the hog's own line may come last: it ends after the request that failed over)
    assert wait_until(lambda: ["full9:http_503", "backup:ok"] in [line["attempts"] for line in audit(launcher, "r9")],
                      timeout=10)  # the router writes audit lines on its own thread


def test_client_disconnect_during_non_streaming_call(launcher):
    """C4 through the router: a client that leaves a non-streaming call frees the node."""
    (node,) = start_nodes(launcher, ("cancel10", [], {"decode_ms": 10}))
    router = launcher.router("--node", node.url, "--poll-interval", "0.2", name="r10")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(router.url + "/v1/chat/completions", json={"model": "sim-model", "messages": MSG,
                   "max_tokens": 3000}, timeout=httpx.Timeout(10, read=0.5), trust_env=False)
    running = lambda: httpx.get(node.url + "/v1/capacity", trust_env=False).json()["load"]["running"]  # noqa: E731
    assert wait_until(lambda: running() == 0, timeout=5)
    assert wait_until(lambda: node_view(router, "cancel10")["inflight"] == 0, timeout=5)
