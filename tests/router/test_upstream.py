"""The router's upstream pool against real sockets: a scripted HTTP/1.1 peer per test."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from server.router import upstream
from server.router.upstream import BadResponse, ConnectFailed, Disconnected, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Peer:
    """A TCP server whose every connection runs ``handler``; it records what it saw."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> Peer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head + Content-Length body), or None when the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed_by_client.set()
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def chunked(writer: asyncio.StreamWriter, parts: list[bytes], end: bool = True) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    for part in parts:
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
    if end:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def post(pool: UpstreamPool, url: str, body: bytes = b"{}", head_timeout: float | None = 5.0,
               path: str = "/v1/x") -> upstream.Response:
    return await pool.request(url, path, body, {"content-type": "application/json"},
                              connect_timeout=2.0, head_timeout=head_timeout)


async def fetch(pool: UpstreamPool, url: str, **kw) -> bytes:
    """POST, read the whole answer, give the connection back."""
    resp = await post(pool, url, **kw)
    try:
        return await resp.read()
    finally:
        resp.release()


async def test_keep_alive_reuses_one_connection_for_sized_and_chunked_answers():
    async def handler(reader, writer):
        while (req := await peer.read_request(reader)) is not None:
            if b"/chunked" in req:
                await chunked(writer, [b"data: 1\n\n", b"data: 2\n\n"])
            else:
                writer.write(ok(b"hello " + req.split(b"\r\n\r\n", 1)[1]))

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0)
        resp = await post(pool, peer.url, b'{"a": 1}')
        assert resp.status == 200 and resp.headers["content-type"] == "text/plain"
        assert await resp.read() == b'hello {"a": 1}'
        resp.release()
        assert await fetch(pool, peer.url, path="/chunked") == b"data: 1\n\ndata: 2\n\n"
        assert peer.connections == 1 and pool.opened == 1 and pool.idle_count() == 1
        first = peer.requests[0]
        assert first.startswith(b"POST /v1/x HTTP/1.1\r\n") and b"content-length: 8\r\n" in first
        await pool.close()


async def test_a_connection_the_node_closed_while_idle_is_retried_once_on_a_new_one():
    async def handler(reader, writer):
        await peer.read_request(reader)
        writer.write(ok(b"one"))  # keep-alive by HTTP/1.1 default, then close anyway
        await writer.drain()

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0)
        assert await fetch(pool, peer.url) == b"one"
        await asyncio.sleep(0.05)  # the close may or may not have been seen: both must work
        assert await fetch(pool, peer.url) == b"one"
        assert len(peer.requests) == 2 and peer.connections == 2


async def test_stale_connection_race_is_retried_without_a_second_request():
    """The close arrives only after the request was written: the node saw nothing."""
    async def handler(reader, writer):
        if peer.connections == 1:
            await peer.read_request(reader)
            writer.write(ok(b"first"))
            await writer.drain()
            await reader.read(1)  # the next request's first byte: close without answering
            return
        while await peer.read_request(reader) is not None:
            writer.write(ok(b"fresh"))

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0)
        assert await fetch(pool, peer.url) == b"first"
        assert await fetch(pool, peer.url) == b"fresh"
        assert peer.connections == 2 and pool.opened == 2


async def test_refused_connection_and_garbage_answers():
    pool = UpstreamPool()
    async with Peer(lambda r, w: asyncio.sleep(0)) as peer:
        url = peer.url
    with pytest.raises(ConnectFailed):
        await post(pool, url)

    async def garbage(reader, writer):
        await peer2.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with Peer(garbage) as peer2:
        with pytest.raises(BadResponse):
            await post(pool, peer2.url)


async def test_silent_node_times_out_and_the_connection_is_closed():
    async def handler(reader, writer):
        await peer.read_request(reader)
        await peer.read_request(reader)  # returns None once the router hangs up

    async with Peer(handler) as peer:
        pool = UpstreamPool()
        with pytest.raises(TimeoutError):
            await post(pool, peer.url, head_timeout=0.2)
        await asyncio.wait_for(peer.closed_by_client.wait(), 2)
        assert pool.idle_count() == 0


async def test_body_stall_times_out_and_a_death_mid_body_raises_after_the_data():
    async def stall(reader, writer):
        await peer.read_request(reader)
        await chunked(writer, [b"data: 1\n\n"], end=False)
        await asyncio.sleep(5)

    async with Peer(stall) as peer:
        pool = UpstreamPool(read_timeout=0.3)
        resp = await post(pool, peer.url)
        assert await resp.next_chunk() == b"data: 1\n\n"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await resp.next_chunk()
        assert 0.25 <= loop.time() - t0 < 2.0
        resp.release()

    async def die(reader, writer):
        await peer2.read_request(reader)
        await chunked(writer, [b"data: 1\n\n", b"data: 2\n\n"], end=False)
        writer.transport.abort()

    async with Peer(die) as peer2:
        pool = UpstreamPool(read_timeout=5.0)
        resp = await post(pool, peer2.url)
        got = b""
        with pytest.raises(Disconnected):
            while chunk := await resp.next_chunk():
                got += chunk
        assert got == b"data: 1\n\ndata: 2\n\n"
        resp.release()
        assert pool.idle_count() == 0


async def test_a_body_without_length_ends_with_the_connection_and_is_not_an_error():
    async def handler(reader, writer):
        await peer.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")
        await writer.drain()

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0)
        resp = await post(pool, peer.url)
        assert resp.until_close and not resp.keep_alive
        assert await resp.read() == b"part one, part two"
        resp.release()
        assert pool.idle_count() == 0


async def test_releasing_an_unfinished_body_closes_the_connection():
    async def handler(reader, writer):
        await peer.read_request(reader)
        await chunked(writer, [b"data: 1\n\n"], end=False)
        await peer.read_request(reader)  # None when the router closes

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0)
        resp = await post(pool, peer.url)
        assert await resp.next_chunk() == b"data: 1\n\n"
        resp.release()
        resp.release()  # idempotent
        await asyncio.wait_for(peer.closed_by_client.wait(), 2)
        assert pool.idle_count() == 0


async def test_a_slow_reader_pauses_the_socket_instead_of_buffering_everything():
    total = 4 << 20
    piece = b"x" * 65536

    async def handler(reader, writer):
        await peer.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0)
        resp = await post(pool, peer.url)
        await asyncio.sleep(0.5)  # the peer writes as fast as it can; nobody reads
        assert resp._buffered <= upstream.HIGH_WATER + 256 * 1024
        got = 0
        while chunk := await resp.next_chunk():
            got += len(chunk)
        assert got == total
        resp.release()


async def test_idle_connections_expire():
    async def handler(reader, writer):
        while await peer.read_request(reader) is not None:
            writer.write(ok(b"ok"))

    async with Peer(handler) as peer:
        pool = UpstreamPool(keepalive_s=0.2, read_timeout=5.0)
        for pause in (0.0, 0.0, 0.4):
            await asyncio.sleep(pause)
            assert await fetch(pool, peer.url) == b"ok"
        assert pool.opened == 2  # the second reused the first; the third found it expired


async def test_a_connection_that_talks_out_of_turn_is_not_reused():
    async def handler(reader, writer):
        await peer.read_request(reader)
        writer.write(ok(b"ok"))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\n")  # while idle: nothing was asked
        while await peer.read_request(reader) is not None:
            writer.write(ok(b"late"))

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0)
        assert await fetch(pool, peer.url) == b"ok"
        await asyncio.sleep(0.3)
        assert await fetch(pool, peer.url) == b"ok"
        assert pool.opened == 2 and len(peer.requests) == 2


async def test_url_prefix_host_header_and_header_injection():
    async def handler(reader, writer):
        while await peer.read_request(reader) is not None:
            writer.write(ok(b"ok"))

    async with Peer(handler) as peer:
        pool = UpstreamPool(read_timeout=5.0)
        resp = await pool.request(peer.url + "/base", "/v1/capacity?x=1", b"", {"authorization": "Bearer k"},
                                  connect_timeout=2.0, head_timeout=2.0, method="GET")
        assert await resp.read() == b"ok"
        resp.release()
        req = peer.requests[0]
        host = peer.url.split("//", 1)[1].encode()
        assert req.startswith(b"GET /base/v1/capacity?x=1 HTTP/1.1\r\nhost: " + host + b"\r\n")
        assert b"content-length" not in req and b"authorization: Bearer k\r\n" in req
        with pytest.raises(ValueError):
            await pool.request(peer.url, "/v1/x", b"", {"x-request-id": "a\r\nx-evil: 1"},
                               connect_timeout=2.0, head_timeout=2.0)
