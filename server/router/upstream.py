"""The router's connection to the nodes: keep-alive HTTP/1.1 on asyncio protocols + httptools.

Every agent call crosses this twice (request out, SSE back), so it is kept to what the
hop needs: one request on a pooled connection, the response head, then the body as the
node's socket yields it. Measured on the 2-core VM (docs/router.md), the same passthrough
hop added 1.2-1.3 ms at p50 through aiohttp and 0.4-0.5 ms through this; the router's
goal is 1 ms for the whole hop. httptools (the parser uvicorn uses) does the HTTP. The
capacity poller uses the same pool: polling one node through httpx kept an idle router
at 16 ms of CPU per second, through this at 5.5 ms.

Rules the proxy relies on:
- ``request`` returns once the node's response head is in; the body is then read with
  :meth:`Response.next_chunk` (streaming) or :meth:`Response.read` (whole).
- A response must end in :meth:`Response.release`: a connection goes back to the pool
  only if its response was read to the end; otherwise it is closed, which is how a client
  disconnect reaches the node (it aborts the generation when its socket closes).
- A pooled connection the node closed while idle is retried once on a new connection,
  and only if not a byte of response came back: the node never saw that request.
- Reading pauses the socket while more than ``HIGH_WATER`` bytes wait for a slow client,
  so a fast node cannot grow the router's memory without bound.
- A node's response head is bounded while it is parsed (``max_head_bytes``, ``max_headers``)
  and its body in total (``max_body_bytes``, per request overridable): past a cap the
  response fails with :class:`ResponseTooLarge` and the connection is closed (RELIABILITY F4).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterator

import httptools

from server.router.upstream_wire import (BadResponse, ConnectFailed, ConnectTimeout, Disconnected, Origin,
                                         ResponseTooLarge, UpstreamIOError)
from server.router.upstream_wire import encode_request as _encode

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024  # a node's status line and headers
MAX_HEADERS = 100
MAX_BODY_BYTES = 64 << 20  # a node's response body, streamed or whole


class _Conn(asyncio.Protocol):
    __slots__ = ("transport", "resp", "closed", "idle_since")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.resp: Response | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # nothing was asked: a node talking out of turn is not reused
            self.close()
            return
        resp.got_bytes = True
        try:
            if resp.status:
                resp.parser.feed_data(data)
            else:
                self._feed_head(resp, data)
        except ResponseTooLarge as exc:
            resp.fail(exc)
            self.close()
        except httptools.HttpParserUpgrade:
            resp.fail(BadResponse("The node answered with a protocol upgrade."))
            self.close()
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, BadResponse) else None
            resp.fail(cause or BadResponse(f"The node's response is not valid HTTP/1.1 ({exc})."))
            self.close()

    @staticmethod
    def _feed_head(resp: Response, data: bytes) -> None:
        """Until the head is complete, feed the parser no more than the head cap allows, so
        an endless head is refused after ``max_head_bytes``, never buffered whole."""
        limit = resp.pool.max_head_bytes
        while data and not resp.status:
            room = limit - resp.head_bytes
            if room <= 0:
                raise ResponseTooLarge(f"The node's response head exceeded {limit} bytes.")
            piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            resp.head_bytes += len(piece)
            resp.parser.feed_data(piece)
        if data and resp._exc is None:  # after a complete response, on_message_begin refuses it
            resp.parser.feed_data(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.resp
        if resp is not None:
            if exc is None and resp.until_close and resp.status and resp._exc is None:
                # A body without a length ends with the connection; not one that already
                # failed (past a cap, say), whose close is ours and must not read as its end.
                resp.on_message_complete()
            else:
                resp.fail(Disconnected("The node closed the connection."))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """One node response. ``status`` and ``headers`` (lower-case names) are set once
    :meth:`UpstreamPool.request` returns."""

    __slots__ = ("conn", "pool", "origin", "parser", "status", "headers", "keep_alive", "until_close", "eof",
                 "got_bytes", "head_bytes", "body_bytes", "max_body", "_raw_headers", "_head", "_chunks", "_buffered",
                 "_exc", "_waiter", "_paused", "_released", "_timer", "_wait_since")

    def __init__(self, conn: _Conn, pool: UpstreamPool, origin: Origin, loop: asyncio.AbstractEventLoop,
                 max_body: int | None = None):
        self.conn = conn
        self.pool = pool
        self.origin = origin
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.until_close = False  # no Content-Length and not chunked: the body ends at EOF
        self.eof = False
        self.got_bytes = False
        self.head_bytes = 0
        self.body_bytes = 0
        self.max_body = pool.max_body_bytes if max_body is None else max_body
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] = loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._exc: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._released = False
        self._timer: asyncio.TimerHandle | None = None
        self._wait_since = 0.0

    # --- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.eof:  # bytes after a complete response: stop parsing; the connection is not reused
            raise BadResponse("The node sent data after its response.")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))
        if len(self._raw_headers) > self.pool.max_headers:
            raise ResponseTooLarge(f"The node's response has more than {self.pool.max_headers} headers.")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 200 <= status <= 599:  # an interim 1xx (never asked for) or no HTTP status at all
            raise BadResponse(f"The node answered with status {status}.")
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers = headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._raw_headers}
        self.until_close = ("content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")
                            and self.status >= 200 and self.status not in (204, 304))
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.max_body:  # stops the parser; data_received fails the response
            raise ResponseTooLarge(f"The node's response body exceeded {self.max_body} bytes.")
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.conn.transport is not None:
            self._paused = True
            self.conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.eof = True
        self._wake()

    # --- failure and waking --------------------------------------------------------------

    def fail(self, exc: Exception) -> None:
        if self.eof or self._exc is not None:
            return
        self._exc = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved: request() may already be gone (cancelled)
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # --- reading -------------------------------------------------------------------------

    @property
    def at_eof(self) -> bool:
        return self.eof and not self._chunks

    async def next_chunk(self) -> bytes:
        """Everything received since the last call, waiting for more if there is none;
        ``b""`` at the end of the body. A wait longer than the pool's ``read_timeout``
        raises TimeoutError; a node failing mid-body raises :class:`UpstreamIOError`.

        A plain coroutine rather than an async generator, and no timer per wait: this runs
        once per relayed SSE event, where each of those costs measurably.
        """
        while True:
            chunks = self._chunks
            if chunks:
                chunk = chunks.popleft() if len(chunks) == 1 else b"".join(_drain(chunks))
                self._buffered -= len(chunk)
                if self._paused and self._buffered < LOW_WATER and not self.conn.closed:
                    self._paused = False
                    self.conn.transport.resume_reading()  # type: ignore[union-attr]
                return chunk
            if self.eof:
                return b""
            if self._exc is not None:
                raise self._exc
            loop = self._head.get_loop()
            self._waiter = waiter = loop.create_future()
            self._wait_since = loop.time()
            if self._timer is None and self.pool.read_timeout is not None:
                self._timer = loop.call_at(self._wait_since + self.pool.read_timeout, self._check_timeout)
            try:
                await waiter
            finally:
                self._waiter = None

    def _check_timeout(self) -> None:
        """One timer per response: it fires at most every ``read_timeout`` and fails the
        wait in progress if that wait has lasted the whole ``read_timeout``."""
        loop = self._head.get_loop()
        limit = self.pool.read_timeout
        assert limit is not None
        waiter = self._waiter
        if waiter is not None and not waiter.done() and loop.time() - self._wait_since >= limit:
            waiter.set_exception(TimeoutError())
            self._timer = None
            return
        since = self._wait_since if waiter is not None else loop.time()
        self._timer = loop.call_at(since + limit, self._check_timeout)

    async def first_event(self) -> bytes:
        """Read up to the end of the first SSE event (at most ``MAX_HEAD_BYTES``) and keep it
        for :meth:`next_chunk`: the router checks it before answering its client."""
        got = b""
        while b"\n\n" not in got and len(got) < MAX_HEAD_BYTES:
            chunk = await self.next_chunk()
            if not chunk:
                break
            got += chunk
        if got:
            self._chunks.appendleft(got)
            self._buffered += len(got)
        return got

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Return the connection to the pool if this response was read to its end; close
        it otherwise (the node sees the close and stops generating). Idempotent."""
        if self._released:
            return
        self._released = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self.conn
        conn.resp = None
        if self.at_eof and self.keep_alive and self._exc is None and not conn.closed:
            self.pool.put(self.origin, conn)
        else:
            conn.close()


def _no_head(head: asyncio.Future[None]) -> None:
    if not head.done():
        head.set_exception(TimeoutError())


def _drain(chunks: deque[bytes]) -> Iterator[bytes]:
    while chunks:
        yield chunks.popleft()


class UpstreamPool:
    """Keep-alive connections to the nodes, per (scheme, host, port).

    Idle connections are dropped after ``keepalive_s``, below the 5 s idle timeout of
    uvicorn (which vLLM and edgefleet nodes serve with), so the pool rarely hands out a
    connection the node is about to close; the one-shot retry covers the rest.
    """

    def __init__(self, keepalive_s: float = 4.0, max_idle_per_origin: int = 1024,
                 ssl_context: ssl.SSLContext | None = None, read_timeout: float | None = None,
                 max_head_bytes: int = MAX_HEAD_BYTES, max_headers: int = MAX_HEADERS,
                 max_body_bytes: int = MAX_BODY_BYTES):
        self.keepalive_s = keepalive_s
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout  # the longest wait for more of a response body
        self.max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._idle: dict[tuple, list[_Conn]] = {}
        self._origins: dict[str, Origin] = {}
        self.opened = 0  # connections made, for tests and /metrics-style curiosity

    def origin(self, url: str) -> Origin:
        o = self._origins.get(url)
        if o is None:
            o = self._origins[url] = Origin(url)
        return o

    async def request(self, url: str, path: str, body: bytes, headers: dict[str, str], *,
                      connect_timeout: float, head_timeout: float | None, method: str = "POST",
                      max_body: int | None = None) -> Response:
        """Send ``body`` to ``url`` + ``path``; return once the response head is in.

        Raises ConnectTimeout or ConnectFailed (nothing was sent), TimeoutError (no head
        within ``head_timeout``: the connection is closed, so the node drops the request),
        or Disconnected/BadResponse (ResponseTooLarge for a head past the caps). ``max_body``
        overrides the pool's body cap for this response.
        """
        origin = self.origin(url)
        payload = _encode(method, origin, path, body, headers)
        loop = asyncio.get_running_loop()
        conn = self._take(origin, loop.time())
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(origin, connect_timeout)
            resp = Response(conn, self, origin, loop, max_body)
            conn.resp = resp
            conn.transport.write(payload)  # type: ignore[union-attr]
            # A plain timer on the head future: cheaper per request than asyncio.timeout.
            timer = loop.call_later(head_timeout, _no_head, resp._head) if head_timeout is not None else None
            try:
                await resp._head
                return resp
            except Disconnected:
                conn.resp = None
                conn.close()
                if reused and not resp.got_bytes:
                    conn, reused = None, False  # the node closed an idle connection: it saw nothing
                    continue
                raise
            except BaseException:
                conn.resp = None
                conn.close()  # timeout or cancellation: closing makes the node drop the request
                raise
            finally:
                if timer is not None:
                    timer.cancel()

    def put(self, origin: Origin, conn: _Conn) -> None:
        idle = self._idle.setdefault(origin.key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        idle.append(conn)

    def _take(self, origin: Origin, now: float) -> _Conn | None:
        idle = self._idle.get(origin.key)
        while idle:
            conn = idle.pop()  # the most recently used: its socket is the warmest
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, timeout: float) -> _Conn:
        loop = asyncio.get_running_loop()
        ctx = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(_Conn, origin.host, origin.port, ssl=ctx,
                                                       server_hostname=origin.host if ctx else None)
        except TimeoutError:
            raise ConnectTimeout(f"Connecting to {origin.host}:{origin.port} timed out.") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"Cannot connect to {origin.host}:{origin.port}: {exc}") from None
        self.opened += 1
        return conn

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


__all__ = ["BadResponse", "ConnectFailed", "ConnectTimeout", "Disconnected", "Origin", "Response", "ResponseTooLarge",
           "UpstreamIOError", "UpstreamPool"]
