"""server/router/core.py: request ids, and every failure path booked through Node.record_failure."""

import asyncio
import re

import pytest

from server.edge.errors import NoHealthyNode, UpstreamTimeout
from server.router.core import _garbage, new_request_id
from server.router.upstream import ConnectTimeout, UpstreamIOError
from tests.router.helpers import node


def test_request_ids_are_unique_and_shaped_like_before():
    ids = [new_request_id() for _ in range(10000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"rt-[0-9a-f]{24}", i) for i in ids), ids[:3]
    # one random prefix per process, then a counter: consecutive ids differ by one
    assert len({i[:15] for i in ids}) == 1
    assert [int(i[15:], 16) for i in ids[:3]] == [int(ids[0][15:], 16) + k for k in range(3)]


class _Failing:
    """An upstream pool whose every request fails with ``exc``."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    async def request(self, *args, **kwargs):
        raise self.exc


def _router_with(nodes, exc):
    from server.router.config import RouterSettings
    from server.router.core import Router
    from server.router.policy import Estimate

    router = Router(RouterSettings(failure_threshold=3, max_attempts=len(nodes)))
    router.upstream = _Failing(exc)  # type: ignore[assignment]
    return router, [Estimate(n, 1.0, 1.0, 0.0, 0.0) for n in nodes]


@pytest.mark.parametrize("exc, outcome, opens, error", [
    (UpstreamIOError("refused"), "connect_error", True, NoHealthyNode),  # a hard failure trips at once
    (ConnectTimeout("slow"), "connect_timeout", False, NoHealthyNode),  # a timeout counts toward the threshold
    (TimeoutError(), "timeout", False, UpstreamTimeout),  # every node slow to its first byte: say so (504)
])
async def test_open_upstream_books_each_failure_through_record_failure(exc, outcome, opens, error):
    a, b = node("http://a:1"), node("http://b:1")
    router, ranked = _router_with([a, b], exc)
    attempts = []
    with pytest.raises(error):
        await router.open_upstream("/v1/chat/completions", b"{}", ranked, "rid", attempts, stream=True)
    assert [(x.node, x.outcome) for x in attempts] == [(a.name, outcome), (b.name, outcome)]
    for n in (a, b):
        assert n.failures == 1 and n.last_error == outcome and n.inflight == 0
        assert (n.breaker.state == "open") is opens
        assert n.breaker.failures == (3 if opens else 1)


async def test_a_non_streamed_timeout_is_504_and_not_retried():
    a, b = node("http://a:1"), node("http://b:1")
    router, ranked = _router_with([a, b], TimeoutError())
    attempts = []
    with pytest.raises(UpstreamTimeout):
        await router.open_upstream("/v1/completions", b"{}", ranked, "rid", attempts, stream=False)
    assert [x.node for x in attempts] == [a.name] and b.failures == 0


def test_first_byte_deadline_scales_with_predicted_ttft():
    from server.router.core import first_byte_deadline

    assert first_byte_deadline(10.0, 3.0, 200.0) == 10.0  # a short prompt: the flag's floor
    assert first_byte_deadline(10.0, 3.0, 20_000.0) == 60.0  # a 20 s prefill gets 3x, not a failover at 10 s
    assert first_byte_deadline(10.0, 3.0, None) == 10.0
    assert first_byte_deadline(10.0, 3.0, float("inf")) == 10.0  # unknown prediction: the floor


async def test_open_upstream_waits_longer_for_a_long_predicted_prefill():
    """The head timeout handed to the pool is k x the node's predicted TTFT when that is longer."""
    from server.router.config import RouterSettings
    from server.router.core import Router
    from server.router.policy import Estimate

    seen = []

    class _Slow:
        async def request(self, url, path, body, headers, connect_timeout, head_timeout):
            seen.append(head_timeout)
            raise TimeoutError

    a = node("http://a:1")
    router = Router(RouterSettings(first_byte_timeout=10.0, first_byte_ttft_factor=3.0, total_deadline=30.0))
    router.upstream = _Slow()  # type: ignore[assignment]
    with pytest.raises(UpstreamTimeout) as info:
        await router.open_upstream("/v1/chat/completions", b"{}", [Estimate(a, 20_000.0, 1.0, 0.0, 0.0)],
                                   "rid", [], stream=True)
    assert seen == [pytest.approx(60.0, abs=0.5)]
    assert info.value.code == "upstream_timeout" and "first_byte" in info.value.message


class _Head:
    """A node's response as far as the router's garbage check reads it."""

    def __init__(self, ctype: str, first: bytes | Exception = b""):
        self.headers = {"content-type": ctype}
        self.first = first

    async def first_event(self) -> bytes:
        if isinstance(self.first, Exception):
            raise self.first
        return self.first


@pytest.mark.parametrize("ctype, stream, first, problem", [
    ("application/json", False, b"", None),
    ("application/json; charset=utf-8", False, b"", None),
    ("text/html", False, b"", "content-type 'text/html', not application/json"),
    ("text/event-stream", False, b"", "content-type 'text/event-stream', not application/json"),
    ("application/json", True, b"", "content-type 'application/json', not text/event-stream"),
    ("text/event-stream", True, b'data: {"choices": []}\n\n', None),
    ("text/event-stream", True, b': keep-alive\r\n\r\ndata: {"x"', None),  # a comment first: fine
    ("text/event-stream", True, b"data: [DONE]\n\n", None),
    ("text/event-stream", True, b"data: {not json\n\n", "its first SSE event is not JSON"),
    ("text/event-stream", True, b"\x00\xffHELLO\n\n", "its first event is not SSE"),
    ("text/event-stream", True, b"", "it closed the stream before its first event"),
    ("text/event-stream", True, TimeoutError(), "timeout"),
    ("text/event-stream", True, UpstreamIOError("reset"), "it failed before its first event (reset)"),
])
def test_a_nodes_200_must_be_what_was_asked_for(ctype, stream, first, problem):
    assert asyncio.run(_garbage(_Head(ctype, first), stream)) == problem  # type: ignore[arg-type]
