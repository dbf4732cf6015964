"""Byte-level fuzzing of the SSE relay: the proxy's real ``_relay`` fed by the upstream pool,
and the scan that counts events and finds usage in what it relays (bounded for the suite;
the long run is scripts/fuzz_upstream.py). The properties are in tests/router/fuzz_wire.py."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.router import proxy
from server.router.core import Router, RouterSettings
from server.router.relay_scan import MAX_LINE, SseTally
from tests.router import fuzz_wire as fw
from tests.router.helpers import node as make_node

BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@BOUNDED
@given(st.data())
def test_the_relay_scan_is_blind_to_how_the_stream_was_split(data):
    fw.check_tally(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_relay_passes_a_stream_through_exactly_and_always_finishes(data):
    fw.check_relay(data)


def test_regression_an_event_split_across_reads_counts_once_and_its_usage_is_found():
    """The relay counted ``data: {`` per chunk and parsed usage from the last chunk naming it:
    an event cut by the node's socket was missed, and a cut usage line lost the node's counts."""
    usage = {"prompt_tokens": 7, "completion_tokens": 3}
    stream = (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
              b'data: {"choices":[],"usage":' + json.dumps(usage).encode() + b'}\n\ndata: [DONE]\n\n')
    for cut in range(1, len(stream)):
        assert fw.tally([stream[:cut], stream[cut:]])[::2] == (2, usage), cut


def test_a_usage_key_with_whitespace_before_its_colon_is_found():
    """JSON allows ``"usage" :``; a node serializing that way still has its counts read."""
    usage = {"prompt_tokens": 4, "completion_tokens": 6}
    stream = (b'data: {"choices":[{"delta":{"content":"usage"}}]}\n\n'
              b'data: {"choices": [], "usage" :\t' + json.dumps(usage).encode() + b'}\n\n'
              b'data: {"choices":[{"delta":{"content":"usage"}}]}\n\n')
    for cut in range(1, len(stream)):
        assert fw.tally([stream[:cut], stream[cut:]])[::2] == (3, usage), cut


def test_regression_a_token_reading_usage_does_not_hide_the_usage_event():
    """Found by the fifth long run: the scan took the last line containing ``"usage"``, so a
    delta whose text was the word usage, after the usage event, hid the node's counts."""
    stream = (b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}\n\n'
              b'data: {"choices":[{"delta":{"content":"usage"}}]}\n\n'
              b'data: {"choices":[{"delta":{"content":"\\"usage\\": none"}}]}\n\n')
    for pieces in ([stream], fw.split(stream, [40, 90])):
        assert fw.tally(pieces)[::2] == (3, {"prompt_tokens": 9, "completion_tokens": 2})


def test_a_line_past_max_line_counts_but_is_not_parsed_however_split():
    line = b'data: {"usage":{"completion_tokens":1},"pad":"' + b"x" * MAX_LINE + b'"}\n\n'
    for pieces in ([line], fw.split(line, [3, 10, MAX_LINE // 2, MAX_LINE + 20])):
        assert fw.tally(pieces) == (1, None, None)


def _whole(body: bytes):
    async def go():
        router = Router(RouterSettings())
        pool = fw.UpstreamPool(read_timeout=None)
        conn, resp = fw._open(pool)
        conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await resp._head
        ex = proxy.Exchange(router, "req-1", "anonymous", "m", False, 5, None)
        ex.node = make_node("http://node.test:8000")
        ex.node.on_dispatch()
        ex.resp, ex.status = resp, resp.status
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        await proxy._whole(ex, fw._Watch(), {}, None, send, [])
        return sent, ex, router
    return asyncio.run(go())


def test_regression_a_node_reporting_odd_usage_cannot_fail_the_request_or_leak_its_slot():
    """A 200 whose usage held a list, a string, a float past int range, or JSON nested past the
    parser's depth raised out of ``_whole`` before the exchange was finished: the client got a
    plain 500 and the node's in-flight count never came back down."""
    deep = b'{"usage":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for body, counts in ((b'{"usage":{"prompt_tokens":[],"completion_tokens":1}}', (5, 1, False)),
                         (b'{"usage":{"prompt_tokens":"x"}}', (5, 0, True)),
                         (b'{"usage":{"completion_tokens":1e400}}', (5, 0, True)),
                         (deep, (5, 0, True)),
                         (b'{"usage":{"prompt_tokens":true,"completion_tokens":-4}}', (5, 0, True)),
                         (b'{"usage":{"prompt_tokens":12,"completion_tokens":4}}', (12, 4, False))):
        sent, ex, router = _whole(body)
        assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == body
        assert ex.node.inflight == 0 and not router.streams and ex._done
        assert (ex.prompt_tokens, ex.completion_tokens, ex.estimated) == counts, body[:60]


def test_usage_scan_ignores_non_counts():
    t = SseTally()
    t.feed(b'data: {"usage":{"prompt_tokens":"9","completion_tokens":2}}\n\n')
    assert t.usage() == {"prompt_tokens": "9", "completion_tokens": 2}
