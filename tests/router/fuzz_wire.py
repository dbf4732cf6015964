"""Byte-level fuzzing of what the router parses from a node (RELIABILITY "Proving it"):
the upstream pool's response parsing (server/router/upstream.py) and the SSE relay
(server/router/proxy.py ``_relay`` with server/router/relay_scan.py).

The properties live here, free of any example budget, so that the suite
(tests/router/test_fuzz_upstream.py, test_fuzz_relay.py: bounded) and the long run
(scripts/fuzz_upstream.py --minutes N) check the same things. Each takes hypothesis'
``data`` object and draws what it needs.

The node side is played by feeding bytes straight into the pool's protocol object
(``_Conn.data_received`` / ``connection_lost``, as asyncio would) over a fake transport:
no sockets, so thousands of examples a second and every split of the stream reachable.
"""

from __future__ import annotations

import asyncio
import json
import string
from dataclasses import dataclass

from hypothesis import strategies as st

from server.router import proxy
from server.router.core import Router, RouterSettings
from server.router.relay_scan import SseTally
from server.router.upstream import BadResponse, Response, ResponseTooLarge, UpstreamIOError, UpstreamPool, _Conn
from tests.router.helpers import node as make_node

FRAMING = ("length", "chunked", "close")
_RESERVED = {"content-length", "transfer-encoding", "connection", "upgrade", "keep-alive", "proxy-connection"}


class FakeTransport:
    __slots__ = ("closed", "paused")

    def __init__(self) -> None:
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


@dataclass(slots=True)
class Outcome:
    error: type | None
    status: int = 0
    headers: dict | None = None
    body: bytes = b""
    head_bytes: int = 0  # bytes fed while the head was incomplete (not compared: split-dependent)
    pooled: int = 0

    def same(self) -> tuple:
        return self.error, self.status, self.headers, self.body, self.pooled

    def same_failure_kind(self) -> tuple:
        """For bytes both past a cap and malformed: which of the two httptools reports first
        depends on where a read ended (it hands a header over only once the next one starts),
        so both count as a bad response here."""
        error = BadResponse if self.error is ResponseTooLarge else self.error
        return error, self.status, self.headers, self.body, self.pooled


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(raw)})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)])]


def cuts_for(data, raw: bytes) -> list[int]:
    return data.draw(st.lists(st.integers(0, max(0, len(raw))), max_size=24), label="cuts")


def caps(data) -> UpstreamPool:
    return UpstreamPool(read_timeout=None,
                        max_head_bytes=data.draw(st.integers(16, 2048), label="max_head"),
                        max_headers=data.draw(st.integers(0, 24), label="max_headers"),
                        max_body_bytes=data.draw(st.integers(0, 4096), label="max_body"))


def _open(pool: UpstreamPool) -> tuple[_Conn, Response]:
    conn = _Conn()
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    resp = Response(conn, pool, pool.origin("http://node.test:8000"), asyncio.get_running_loop())
    conn.resp = resp
    return conn, resp


def _settle(conn: _Conn, resp: Response) -> None:
    """After the node's last byte: asyncio reports the close it made or the one we made."""
    done = resp._head.done() and (resp.eof or resp._exc is not None)
    if conn.transport.closed or not done:  # type: ignore[union-attr]
        conn.connection_lost(None)


async def _read(pool: UpstreamPool, pieces: list[bytes]) -> Outcome:
    conn, resp = _open(pool)
    for piece in pieces:
        if conn.closed:
            break
        conn.data_received(piece)
    _settle(conn, resp)
    try:
        await resp._head
        body = await resp.read()
    except UpstreamIOError as exc:  # the pool's one documented error family
        resp.release()
        return Outcome(type(exc), resp.status, dict(resp.headers), head_bytes=resp.head_bytes)
    resp.release()
    return Outcome(None, resp.status, dict(resp.headers), body, resp.head_bytes, pool.idle_count())


def read(pool_args: dict, pieces: list[bytes]) -> Outcome:
    return asyncio.run(_read(UpstreamPool(**pool_args), pieces))


def pool_args(pool: UpstreamPool) -> dict:
    return {"read_timeout": None, "max_head_bytes": pool.max_head_bytes, "max_headers": pool.max_headers,
            "max_body_bytes": pool.max_body_bytes}


# --- well-formed responses -----------------------------------------------------------------

_name = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=12).filter(
    lambda n: n not in _RESERVED)
_value = st.text(string.ascii_letters + string.digits + " -_.:/;=,\"'()", max_size=30).map(str.strip)


@dataclass(slots=True)
class WellFormed:
    raw: bytes
    head_len: int
    status: int
    headers: dict
    n_headers: int
    body: bytes
    framing: str


def chunk_body(body: bytes, cuts: list[int], ext: bool) -> bytes:
    out = []
    for piece in split(body, cuts):
        if piece:
            out.append(b"%x%s\r\n%s\r\n" % (len(piece), b";x=1" if ext else b"", piece))
    return b"".join(out) + b"0\r\n\r\n"


def well_formed(data) -> WellFormed:
    status = data.draw(st.integers(200, 599).filter(lambda s: s not in (204, 304)), label="status")
    reason = data.draw(st.sampled_from([b"OK", b"", b"Whatever It Says"]), label="reason")
    headers = data.draw(st.dictionaries(_name, _value, max_size=8), label="headers")
    body = data.draw(st.binary(max_size=3000), label="body")
    framing = data.draw(st.sampled_from(FRAMING), label="framing")
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines += [b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()]
    if framing == "length":
        lines.append(b"content-length: %d\r\n" % len(body))
        payload = body
    elif framing == "chunked":
        lines.append(b"transfer-encoding: chunked\r\n")
        payload = chunk_body(body, cuts_for(data, body), data.draw(st.booleans(), label="ext"))
    else:
        payload = body
    head = b"".join(lines) + b"\r\n"
    return WellFormed(head + payload, len(head), status, headers, len(headers) + (framing != "close"), body, framing)


def check_well_formed(data) -> None:
    """A well-formed response comes back exactly (status, headers, body), however its bytes
    were split, or fails with ResponseTooLarge exactly when it is past a cap; a connection is
    pooled only after a complete keep-alive response."""
    pool = caps(data)
    wf = well_formed(data)
    pieces = split(wf.raw, cuts_for(data, wf.raw))
    got = read(pool_args(pool), pieces)
    if wf.head_len > pool.max_head_bytes or wf.n_headers > pool.max_headers:
        assert got.error is ResponseTooLarge, (got, wf.head_len, wf.n_headers)
        assert got.head_bytes <= pool.max_head_bytes
        return
    if len(wf.body) > pool.max_body_bytes:
        assert got.error is ResponseTooLarge, got
        assert got.status == wf.status
        return
    assert got.error is None, got
    assert got.status == wf.status
    assert {k: v for k, v in got.headers.items() if k in wf.headers} == wf.headers
    assert got.body == wf.body
    assert got.pooled == (0 if wf.framing == "close" else 1)
    assert got.same() == read(pool_args(pool), [wf.raw]).same()  # the same whole as split


# --- hostile bytes -------------------------------------------------------------------------

def _mutate(data, raw: bytes) -> bytes:
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        pos = data.draw(st.integers(0, len(buf)), label="pos")
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "junk"]), label="op")
        byte = data.draw(st.sampled_from([0, 9, 10, 13, 32, 48, 58, 59, 70, 97, 127, 128, 255]), label="byte")
        if op == "flip" and pos < len(buf):
            buf[pos] = byte
        elif op == "insert":
            buf.insert(pos, byte)
        elif op == "delete" and pos < len(buf):
            del buf[pos]
        elif op == "junk":
            buf[pos:pos] = data.draw(st.binary(max_size=40), label="junk")
    return bytes(buf)


def hostile(data) -> bytes:
    kind = data.draw(st.sampled_from(["binary", "after_status", "mutated", "trailing"]), label="kind")
    if kind == "binary":
        return data.draw(st.binary(max_size=2000), label="raw")
    if kind == "after_status":
        status = data.draw(st.sampled_from([b"200 OK", b"100 Continue", b"103 Early Hints", b"999 X", b"000 Y"]),
                           label="status_line")
        return b"HTTP/1.1 " + status + b"\r\n" + data.draw(st.binary(max_size=2000), label="rest")
    wf = well_formed(data)
    if kind == "trailing":  # a complete response, then more
        return wf.raw + data.draw(st.binary(min_size=1, max_size=200), label="trailing")
    return _mutate(data, wf.raw)


def check_hostile(data) -> None:
    """Any bytes: the only error is the pool's own (UpstreamIOError), the caps hold, and the
    outcome does not depend on how the bytes were split."""
    pool = caps(data)
    raw = hostile(data)
    pieces = split(raw, cuts_for(data, raw))
    got = read(pool_args(pool), pieces)  # anything but UpstreamIOError propagates: a failure
    assert got.error is not None or 200 <= got.status <= 599  # never a 1xx or a made-up status
    assert got.head_bytes <= pool.max_head_bytes
    assert len(got.body) <= pool.max_body_bytes
    if got.headers is not None:
        assert len(got.headers) <= pool.max_headers
    assert got.same_failure_kind() == read(pool_args(pool), [raw]).same_failure_kind()


# --- the SSE relay -------------------------------------------------------------------------

_text = st.text(max_size=20)


@dataclass(slots=True)
class Stream:
    body: bytes
    events: int  # lines starting "data: {"
    usage: dict | None


def sse_stream(data) -> Stream:
    """What a node streams: JSON data events (some with usage), comments, an optional
    [DONE], LF or CRLF line ends."""
    nl = data.draw(st.sampled_from([b"\n", b"\r\n"]), label="newline")
    parts, events, usage = [], 0, None
    for _ in range(data.draw(st.integers(0, 12), label="n_events")):
        kind = data.draw(st.sampled_from(["delta", "delta", "usage", "comment", "named"]), label="event")
        if kind == "comment":
            parts.append(b": ping" + nl + nl)
            continue
        obj = {"id": "chatcmpl-x", "choices": [{"index": 0, "delta": {"content": data.draw(_text, label="t")}}]}
        if kind == "usage":
            usage = {"prompt_tokens": data.draw(st.integers(0, 9999), label="p"),
                     "completion_tokens": data.draw(st.integers(0, 9999), label="c")}
            obj = {"id": "chatcmpl-x", "choices": [], "usage": usage}
        line = b"data: " + json.dumps(obj, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode()
        parts.append((b"event: message" + nl if kind == "named" else b"") + line + nl + nl)
        events += 1
    if data.draw(st.booleans(), label="done"):
        parts.append(b"data: [DONE]" + nl + nl)
    return Stream(b"".join(parts), events, usage)


def tally(pieces: list[bytes]) -> tuple[int, bytes | None, dict | None]:
    t = SseTally()
    for p in pieces:
        t.feed(p)
    t.close()
    return t.events, t.usage_line, t.usage()


def check_tally(data) -> None:
    """The relay's scan of a well-formed stream counts each event once and finds the last usage,
    however the stream was split; of arbitrary bytes, it never raises and is split-blind."""
    if data.draw(st.booleans(), label="well_formed"):
        s = sse_stream(data)
        pieces = split(s.body, cuts_for(data, s.body))
        events, _, usage = tally(pieces)
        assert (events, usage) == (s.events, s.usage)
    else:
        raw = data.draw(st.binary(max_size=3000) | st.builds(lambda a, b: a + b"data: {" + b, st.binary(max_size=200),
                                                             st.binary(max_size=200)), label="raw")
        pieces = split(raw, cuts_for(data, raw))
        assert tally(pieces) == tally([raw])


class _Watch:
    gone = False

    def disarm(self) -> None:
        pass

    def stop(self) -> None:
        pass


_router: list[Router] = []


async def _relay_once(pieces: list[bytes]) -> tuple[list[dict], proxy.Exchange, object]:
    if not _router:  # one for all examples (building one costs more than an example)
        _router.append(Router(RouterSettings()))
    router = _router[0]
    pool = UpstreamPool(read_timeout=None, max_body_bytes=4096)
    conn, resp = _open(pool)

    async def node_side() -> None:
        for piece in pieces:
            if conn.closed:
                break
            conn.data_received(piece)
            await asyncio.sleep(0)  # let the relay take what arrived: each read is a chunk
        _settle(conn, resp)

    feeder = asyncio.ensure_future(node_side())
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)
        await asyncio.sleep(0)

    ex = proxy.Exchange(router, "req-1", "anonymous", "m", True, 5, None)
    ex.node = make_node("http://node.test:8000")
    ex.node.on_dispatch()
    try:
        await resp._head
    except UpstreamIOError:  # open_upstream's business (fail over), not the relay's
        await feeder
        await ex.finish()
        return [], ex, router
    ex.resp, ex.status = resp, resp.status
    await proxy._relay(ex, _Watch(), send, [])  # type: ignore[arg-type]
    await feeder
    return sent, ex, router


def relay(pieces: list[bytes]):
    return asyncio.run(_relay_once(pieces))


def check_relay(data) -> None:
    """Through the proxy's real ``_relay``: a well-formed chunked SSE stream goes out byte for
    byte with the right token count and usage; a hostile one goes out as a prefix of what the
    node sent plus at most one in-band error; either way the exchange is finished (node
    in-flight back to 0, no stream left registered) and nothing raises."""
    if data.draw(st.booleans(), label="well_formed"):
        s = sse_stream(data)
        body = s.body
        raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk_body(body, cuts_for(data, body), False)
    else:
        s = None
        raw = hostile(data)
    sent, ex, router = relay(split(raw, cuts_for(data, raw)))
    assert ex.node.inflight == 0 and not router.streams and ex._done
    if not sent:
        return  # the head failed: the proxy answers with an error before any relay
    assert sent[0]["type"] == "http.response.start" and sent[-1] == {"type": "http.response.body", "body": b"",
                                                                   "more_body": False}
    out = b"".join(m.get("body", b"") for m in sent[1:])
    if s is not None and len(s.body) <= 4096:
        assert out == s.body and ex.error is None
        assert ex.completion_tokens == (s.usage["completion_tokens"] if s.usage else s.events)
        assert ex.prompt_tokens == (s.usage["prompt_tokens"] or 5 if s.usage else 5)
    if ex.error is not None:  # one in-band error, last, naming what happened
        last = json.loads(sent[-2]["body"][len(b"\n\ndata: "):])
        assert last["error"]["code"] == ex.error
