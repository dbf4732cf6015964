"""What a request must do to arrive, for the node and the router alike (RELIABILITY F1-F3).

uvicorn bounds none of it: its idle timer is armed only after a response, so a socket that
trickles a header byte at a time, or stalls in its body, is held forever; httptools buffers
a header whole before anyone can count it; and ``limit_concurrency`` answers a plain-text
503. :class:`LimitedHttpProtocol` is uvicorn's httptools protocol with:

- a head deadline: the request head (request line and headers) must be complete within
  ``header_timeout`` of the connection opening or of the request's first byte;
- a body stall deadline: once the head is in, no more than ``body_timeout`` may pass
  without a body byte while the body is incomplete (time the server itself stops reading,
  for back-pressure or an unanswered ``Expect: 100-continue``, does not count);
- head size and header count bounded while parsing: bytes are fed to the parser at most
  up to ``max_head_bytes`` while a head is open, so an endless header never reaches memory;
- a connection cap: past ``max_connections`` open connections (or that many requests in
  flight) a request gets an OpenAI-envelope 503 ``too_many_connections`` and the connection
  closes. An idle connection over the cap is closed by the head deadline.

A refused head gets 408/431 with an error envelope, then a short lingering close: the socket
is shut for writing and what the client still sends is discarded for up to ``LINGER_S``, so
the client reads the answer instead of a connection reset.

Both CLIs build their uvicorn.Config with :func:`server_config` and add the flags with
:func:`transport_options`, so the settings live here once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("edgefleet.transport")

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; the app's own check stops headers at 32 KiB
MAX_HEADERS = 128
LINGER_S = 1.0


@dataclass(slots=True, frozen=True)
class TransportLimits:
    header_timeout: float = 30.0
    body_timeout: float = 30.0
    max_connections: int | None = 1000
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS

    def __post_init__(self) -> None:
        if self.header_timeout <= 0 or self.body_timeout <= 0:
            raise ValueError("--header-timeout and --body-timeout must be positive")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("--max-connections must be at least 1 (0 on the command line: no cap)")


def transport_options(opt: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The three flags, added with the CLI's own ``opt`` (so each keeps its env prefix)."""
    import click

    positive = click.FloatRange(min=0, min_open=True)
    flags = [
        opt("--header-timeout", type=positive, default=30.0, show_default=True,
            help="Seconds a request head (request line and headers) may take to arrive; then 408 and close."),
        opt("--body-timeout", type=positive, default=30.0, show_default=True,
            help="Seconds a request body may stall between two chunks; then the connection is closed."),
        opt("--max-connections", type=click.IntRange(min=0), default=1000, show_default=True,
            help="Open connections (and requests in flight) served at once; past it: 503 too_many_connections. "
            "0: no cap."),
        opt("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), default=None,
            help="Serve HTTPS with this PEM certificate (chain); needs --ssl-keyfile."),
        opt("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None,
            help="The PEM private key for --ssl-certfile."),
    ]

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        for flag in reversed(flags):
            fn = flag(fn)
        return fn
    return wrap


def limits_from(kw: dict[str, Any]) -> TransportLimits:
    """Pop the three flags from a click kwargs dict."""
    cap = kw.pop("max_connections")
    return TransportLimits(header_timeout=kw.pop("header_timeout"), body_timeout=kw.pop("body_timeout"),
                           max_connections=cap or None)


def tls_from(kw: dict[str, Any]) -> dict[str, str]:
    """The uvicorn arguments for ``--ssl-certfile``/``--ssl-keyfile`` (both or neither)."""
    import click

    cert, key = kw.get("ssl_certfile"), kw.get("ssl_keyfile")
    if bool(cert) != bool(key):
        raise click.UsageError("--ssl-certfile and --ssl-keyfile go together")
    return {"ssl_certfile": cert, "ssl_keyfile": key} if cert else {}


def server_config(app: Any, *, host: str, port: int, limits: TransportLimits, **kw: Any):
    """The uvicorn.Config both node and router run with."""
    import uvicorn

    _raise_fd_limit(limits.max_connections)
    kw.setdefault("access_log", False)
    return uvicorn.Config(app, host=host, port=port, http=protocol_class(limits), limit_concurrency=None, **kw)


def _raise_fd_limit(max_connections: int | None) -> None:
    """Each connection is a descriptor (the router needs one more per request to a node):
    lift the soft limit toward the hard one so the cap, not EMFILE, is what refuses."""
    if max_connections is None:
        return
    want = 2 * max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want or soft == resource.RLIM_INFINITY:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError):
        new = soft
    if new < want:
        log.warning("open-file limit %d is below the %d that --max-connections %d wants", new, want,
                    max_connections)


def protocol_class(limits: TransportLimits) -> type[LimitedHttpProtocol]:
    return type("EdgefleetHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})


def _envelope(message: str, type_: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


def _raw_response(status: int, reason: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n"
            % (status, reason.encode(), len(body), extra)) + body


class _Refused(Exception):
    pass


class LimitedHttpProtocol(HttpToolsProtocol):
    limits: TransportLimits = TransportLimits()

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.limit_concurrency = None  # the cap is checked here, with an envelope
        self._in_head = True  # the parser is between requests or inside a head
        self._head_open = False  # a head has begun and is not complete
        self._body_open = False  # a head is complete and its body is not
        self._head_bytes = 0
        self._header_count = 0
        self._refused = False
        self._discarding = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_body = 0.0

    # --- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head()  # a connection that never sends a byte is held no longer than a slow one

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._unset_keepalive_if_required()
        limit = self.limits.max_head_bytes
        try:
            while data:
                if not self._in_head:
                    self.parser.feed_data(data)
                    break
                room = limit - self._head_bytes
                if room <= 0:
                    raise _Refused()
                piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
                self._head_bytes += len(piece)
                self.parser.feed_data(piece)
                if self.transport.is_closing():
                    return
            # Deadlines are armed only for what this read left incomplete: a request that
            # arrives in one read (the usual case) costs no timer at all.
            if self._head_open and self._head_timer is None:
                self._arm_head()
            elif self._body_open and self._body_timer is None:
                self._last_body = self.loop.time()
                self._body_timer = self.loop.call_later(self.limits.body_timeout, self._check_body)
        except _Refused:
            self._refuse(431, "Request Header Fields Too Large", "The request head is too large (at most "
                         f"{limit} bytes and {self.limits.max_headers} headers).", "request_header_fields_too_large")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if self._refused:  # raised from on_header: the parser wraps it
                self._refuse(431, "Request Header Fields Too Large", "Too many request headers (at most "
                             f"{self.limits.max_headers}).", "request_header_fields_too_large")
                return
            # uvicorn answers a bare text/plain 400 here; every refusal is an envelope. The
            # parser may fail after a head was handed to the app (a bad Transfer-Encoding):
            # that request gets the 400, its app's sends are dropped.
            self.logger.warning("Invalid HTTP request received.")
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                cycle.disconnected = True
                cycle.message_event.set()
            busy = cycle is not None and cycle.response_started and not cycle.response_complete
            self._refuse(400, "Bad Request", f"Invalid HTTP request: {str(exc)[:100]}.", "invalid_http_request",
                         busy=busy)

    # --- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._head_open = True
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refused = True
            raise _Refused()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = self._head_open = False
        self._body_open = True
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        cap = self.limits.max_connections
        if cap is not None and (len(self.connections) > cap or len(self.tasks) >= cap):
            self.logger.warning("connection cap of %d reached: answering 503", cap)
            self.app = _too_many_connections(cap)  # this connection only; it closes after the answer
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._body_timer is not None:
            self._last_body = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_open = False
        self._in_head = True  # whatever comes next on this connection is a head: count it
        self._head_bytes = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # --- deadlines -----------------------------------------------------------------------

    def _arm_head(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        self._refuse(408, "Request Timeout", f"The request head did not arrive within {self.limits.header_timeout:g} s.",
                     "request_timeout")

    def _check_body(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            self._last_body = now  # the server is not reading: not the client's stall
        elapsed = now - self._last_body
        if elapsed < self.limits.body_timeout:
            self._body_timer = self.loop.call_later(self.limits.body_timeout - elapsed, self._check_body)
            return
        self.logger.info("closing a connection whose request body stalled for %.1f s", elapsed)
        started = cycle.response_started
        cycle.disconnected = True  # the app's receive() now says http.disconnect; its sends are dropped
        cycle.message_event.set()
        if not started:
            self._refuse(408, "Request Timeout", f"The request body stalled for more than "
                         f"{self.limits.body_timeout:g} s.", "request_timeout", busy=False)
        else:
            self.transport.close()

    def _refuse(self, status: int, reason: str, message: str, code: str, busy: bool | None = None) -> None:
        """Answer (unless a response is already under way on this connection), then close."""
        self._cancel_timers()
        if busy is None:
            busy = self.cycle is not None and not self.cycle.response_complete  # a pipelined request runs
        if not busy:
            self.transport.write(_raw_response(status, reason, _envelope(message, "invalid_request_error", code)))
        if busy or not self.transport.can_write_eof():
            self.transport.close()
            return
        # Lingering close: stop sending, discard what still arrives, close a moment later.
        self._discarding = True
        self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)


def _too_many_connections(cap: int):
    body = _envelope(f"The server has reached its cap of {cap} open connections; retry shortly.", "server_error",
                     "too_many_connections")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
    return app


__all__ = ["LimitedHttpProtocol", "TransportLimits", "limits_from", "protocol_class", "server_config",
           "transport_options"]
