"""The upstream pool's caps on what a node sends back (RELIABILITY F4), against scripted
TCP peers: an endless head, thousands of headers, an endless body, streamed or whole."""

from __future__ import annotations

import asyncio

import pytest

from server.router.upstream import ResponseTooLarge, UpstreamPool
from tests.router.test_upstream import Peer, chunked, fetch, post


async def endless(writer: asyncio.StreamWriter, prefix: bytes, piece: bytes, sent: list[int]) -> None:
    """Write ``prefix`` then ``piece`` forever, counting bytes, until the reader goes away."""
    writer.write(prefix)
    sent[0] += len(prefix)
    while True:
        writer.write(piece)
        sent[0] += len(piece)
        await writer.drain()


async def test_an_endless_response_head_is_refused_at_the_cap():
    sent = [0]

    async def handler(reader, writer):
        await peer.read_request(reader)
        await endless(writer, b"HTTP/1.1 200 OK\r\nx-endless: ", b"a" * 65536, sent)

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0, max_head_bytes=16 * 1024)
        with pytest.raises(ResponseTooLarge, match="head exceeded 16384 bytes"):
            await asyncio.wait_for(post(pool, peer.url), 5)
        await asyncio.sleep(0.05)
        assert pool.idle_count() == 0


async def test_thousands_of_response_headers_are_refused():
    async def handler(reader, writer):
        await peer.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(5000))
                     + b"content-length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0, max_headers=50)
        with pytest.raises(ResponseTooLarge, match="more than 50 headers"):
            await asyncio.wait_for(post(pool, peer.url), 5)


async def test_a_head_under_the_caps_with_a_body_in_the_same_packet_passes():
    body = b"x" * 200_000  # one write: head and body arrive together, past the head cap in total

    async def handler(reader, writer):
        await peer.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0, max_head_bytes=1024)
        assert await fetch(pool, peer.url) == body


@pytest.mark.parametrize("stream", [False, True])
async def test_an_endless_body_ends_at_the_body_cap(stream):
    sent = [0]
    cap = 1 << 20

    async def handler(reader, writer):
        await peer.read_request(reader)
        if stream:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            while True:
                await chunked_piece(writer, b"data: " + b"z" * 8000 + b"\n\n")
                sent[0] += 8000
        else:
            await endless(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\n\r\n", b"z" * 65536, sent)

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0, max_body_bytes=cap)
        resp = await post(pool, peer.url)
        got = 0
        with pytest.raises(ResponseTooLarge, match=f"body exceeded {cap} bytes"):
            while chunk := await asyncio.wait_for(resp.next_chunk(), 5):
                got += len(chunk)
        resp.release()
        assert got <= cap
        await asyncio.sleep(0.1)
        assert sent[0] < cap + 8 * (1 << 20)  # the node was cut off, not drained


async def chunked_piece(writer: asyncio.StreamWriter, part: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
    await writer.drain()


async def test_a_per_request_body_cap_overrides_the_pools():
    async def handler(reader, writer):
        while await peer.read_request(reader) is not None:
            await chunked(writer, [b"y" * 3000])

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0)
        resp = await pool.request(peer.url, "/v1/capacity", b"", {}, method="GET", connect_timeout=2,
                                  head_timeout=5, max_body=1000)
        with pytest.raises(ResponseTooLarge):
            await resp.read()
        resp.release()
        assert await fetch(pool, peer.url) == b"y" * 3000  # the pool's own cap is untouched


class _RogueNode:
    """A thread serving HTTP/1.1 by hand: a valid capacity document, then answers that never
    end to every completion request."""

    def __init__(self) -> None:
        import socketserver
        import threading

        from tests.router.helpers import capacity, json_200, read_requests

        cap_doc = capacity(model="sim-model", name="rogue").model_dump_json().encode()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    for line, body in read_requests(self.rfile):
                        if line.startswith(b"GET /v1/capacity"):
                            self.wfile.write(json_200(cap_doc))
                        elif b'"stream":true' in body.replace(b" ", b""):
                            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                             b"transfer-encoding: chunked\r\n\r\n")
                            event = b"data: {\"x\": \"" + b"z" * 8000 + b"\"}\n\n"
                            while True:
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                        else:
                            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                             b"content-length: 99999999999\r\n\r\n")
                            while True:
                                self.wfile.write(b"z" * 65536)
                except OSError:
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_router_ends_an_endless_node_answer_with_an_error_envelope(tmp_path):
    """Through a real router process: the client gets a 502 envelope (whole) or an in-band
    error event (stream) naming the cap, and the router stays up."""
    import httpx

    from tests.router.conftest import Launcher, fleet, wait_until

    rogue = _RogueNode()
    launch = Launcher(tmp_path)
    try:
        router = launch.router("--node", rogue.url, "--no-discover", "--max-response-bytes", str(1 << 20),
                               "--open-seconds", "0.1", "--success-threshold", "1", "--poll-interval", "0.2")
        req = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(router.url + "/v1/chat/completions", json=req, timeout=30)
        assert r.status_code == 502
        assert "body exceeded 1048576 bytes" in r.json()["error"]["message"]
        # The failure opened the node's breaker; a good capacity poll closes it again.
        assert wait_until(lambda: fleet(router)["nodes"][0]["health"] == "closed")
        with httpx.stream("POST", router.url + "/v1/chat/completions", json={**req, "stream": True},
                          timeout=30) as s:
            assert s.status_code == 200
            text = s.read().decode()
        assert "upstream_response_too_large" in text and "[DONE]" not in text
        assert len(text) < 2 << 20
        assert httpx.get(router.url + "/health", timeout=5).status_code == 200
    finally:
        launch.close()
        rogue.close()
