"""Hostile transport against real `edgefleet serve --engine sim` and `edgefleet route`
processes over real sockets (RELIABILITY F1-F3): server/transport.py's deadlines, head caps
and connection cap, with short deadlines so each case ends in seconds."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.router.conftest import Launcher, Proc

DEADLINE = 1.0  # --header-timeout and --body-timeout in these tests
CAP = 8
FLAGS = ["--header-timeout", str(DEADLINE), "--body-timeout", str(DEADLINE), "--max-connections", str(CAP)]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    launch = Launcher(tmp_path_factory.mktemp("transport"))
    node = launch.node("t-node", extra=FLAGS, decode_ms=20.0)
    router = launch.router("--node", node.url, "--no-discover", *FLAGS)
    yield {"node": node, "router": router}
    launch.close()


@pytest.fixture(params=["node", "router"])
def server(request, servers) -> Proc:
    return servers[request.param]


def addr(proc: Proc) -> tuple[str, int]:
    parts = urlsplit(proc.url)
    return parts.hostname, parts.port


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


def reset_peak_rss(pid: int) -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic)."""
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data, time.monotonic()


def status_of(data: bytes) -> int | None:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def envelope(data: bytes) -> dict:
    return json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]


def test_slowloris_heads_are_closed_at_the_deadline(server):
    """Twenty sockets trickling a never-ending head, a byte each per 100 ms: every one is
    answered 408 and closed at the head deadline, not held."""
    socks = [socket.create_connection(addr(server)) for _ in range(20)]
    start = time.monotonic()
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
    closed: dict[socket.socket, tuple[bytes, float]] = {}
    i = 0
    while len(closed) < len(socks) and time.monotonic() - start < 5 * DEADLINE:
        for s in socks:
            if s in closed:
                continue
            try:
                s.send(head[i:i + 1])
            except OSError:
                closed[s] = (b"", time.monotonic())
        i += 1
        ready, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.1)
        for s in ready:
            closed[s] = read_until_closed(s, 2.0)
    for s in socks:
        s.close()
    assert len(closed) == 20, "some slowloris sockets were still open after 5 deadlines"
    for data, at in closed.values():
        assert DEADLINE * 0.8 <= at - start <= DEADLINE + 1.5
        assert status_of(data) == 408 and envelope(data)["code"] == "request_timeout"
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


def test_stalled_body_is_closed_but_a_slow_steady_body_is_served(server):
    body = json.dumps({"model": "sim-model", "messages": [{"role": "user", "content": "hi " * 40}],
                       "max_tokens": 2}).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body))
    # Stalled: the head and 10 bytes, then nothing.
    s = socket.create_connection(addr(server))
    s.sendall(head + body[:10])
    start = time.monotonic()
    data, at = read_until_closed(s, 10)
    s.close()
    assert DEADLINE * 0.8 <= at - start <= DEADLINE + 1.5
    assert status_of(data) == 408 and "stalled" in envelope(data)["message"]
    # Steady: a chunk every 0.4 s for longer than the deadline in total is not a stall.
    s = socket.create_connection(addr(server))
    s.sendall(head)
    step = len(body) // 5 + 1
    for k in range(0, len(body), step):
        time.sleep(0.4)
        s.sendall(body[k:k + step])
    data = _read_response(s)
    s.close()
    assert status_of(data) == 200, data[:300]


def _read_response(s: socket.socket) -> bytes:
    """One Content-Length or chunked response on a kept-alive connection (no close to wait for)."""
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
                  None)
    while (length is not None and len(rest) < length) or (length is None and not rest.endswith(b"0\r\n\r\n")):
        rest += s.recv(65536)
    return head + b"\r\n\r\n" + rest


def _send_big_head(server: Proc, head: bytes, first: bytes = b"") -> tuple[bytes, float, int]:
    """Send ``head`` (after ``first``, a whole request answered on the same connection) while
    reading; the answer, the seconds until the server closed, and the server's peak RSS
    growth in KiB meanwhile."""
    s = socket.create_connection(addr(server))
    if first:
        s.sendall(first)
        assert status_of(_read_response(s)) == 200
    reset_peak_rss(server.pid)
    before = rss_kib(server.pid)
    start = time.monotonic()
    err: list[BaseException] = []

    def push() -> None:
        try:
            s.sendall(head)
        except OSError as exc:  # the server closed while we were still sending: expected
            err.append(exc)
    t = threading.Thread(target=push, daemon=True)
    t.start()
    data, at = read_until_closed(s, 10)
    t.join(10)
    s.close()
    return data, at - start, rss_kib(server.pid, "VmHWM") - before


def test_huge_header_refused_while_parsing_with_memory_bounded(server):
    data, took, grew_kib = _send_big_head(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
                                          + b"a" * (16 << 20) + b"\r\n\r\n")
    assert status_of(data) in (431, None)  # the answer, or a reset if the client was mid-send
    if data:
        assert envelope(data)["code"] == "request_header_fields_too_large"
    assert took < 3.0
    assert grew_kib < 4096, f"server grew {grew_kib} KiB for one 16 MiB header"


def test_a_huge_header_on_a_kept_alive_connection_is_bounded_too(server):
    get = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    data, took, grew_kib = _send_big_head(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
                                          + b"a" * (16 << 20) + b"\r\n\r\n", first=get)
    assert status_of(data) in (431, None) and took < 3.0
    assert grew_kib < 4096, f"server grew {grew_kib} KiB for one 16 MiB header"


def test_ten_thousand_headers_refused(server):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    data, took, grew_kib = _send_big_head(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
    assert status_of(data) == 431 and envelope(data)["code"] == "request_header_fields_too_large"
    assert took < 3.0 and grew_kib < 4096


@pytest.mark.parametrize("header", [b"Content-Length: -1", b"Content-Length: 1e3", b"Transfer-Encoding: nope",
                                    b"X-Nul: a\x00b", b"Host: \x00", b"Bad Name: v"])
def test_a_malformed_request_is_an_envelope_400_and_closed(server, header):
    """The HTTP parser's own refusals are envelopes too (uvicorn's are bare text)."""
    s = socket.create_connection(addr(server))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              + header + b"\r\n\r\n{}")
    data, _ = read_until_closed(s, 5)
    s.close()
    assert status_of(data) == 400, data[:200]
    err = envelope(data)
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "invalid_http_request", err
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


def test_connection_flood_gets_a_clear_503_and_the_running_stream_is_unaffected(server):
    stream_result: dict = {}
    started = threading.Event()

    def long_stream() -> None:
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=30,
                          json={"model": "sim-model", "stream": True, "max_tokens": 60,
                                "messages": [{"role": "user", "content": "hi"}]}) as r:
            stream_result["status"] = r.status_code
            started.set()
            stream_result["body"] = r.read().decode()

    t = threading.Thread(target=long_stream)
    t.start()
    # The stream holds its connection before the flood (60 tokens at 20 ms: about 1.2 s);
    # on a loaded machine a fixed sleep let the flood arrive first.
    assert started.wait(20), "the stream never started"
    flood = [socket.create_connection(addr(server)) for _ in range(3 * CAP)]
    try:
        time.sleep(0.1)
        r = httpx.get(server.url + "/v1/models", timeout=5)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "too_many_connections" and r.headers["retry-after"] == "1"
        assert r.headers["connection"] == "close"
    finally:
        for s in flood:
            s.close()
    t.join(30)
    assert stream_result["status"] == 200 and stream_result["body"].rstrip().endswith("data: [DONE]")
    time.sleep(0.2)
    assert httpx.get(server.url + "/v1/models", timeout=5).status_code == 200  # below the cap again
