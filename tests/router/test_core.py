"""server/router/core.py: request ids, and every failure path booked through Node.record_failure."""

import re

import pytest

from server.edge.errors import NoHealthyNode, UpstreamTimeout
from server.router.core import new_request_id
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


@pytest.mark.parametrize("exc, outcome, opens", [
    (UpstreamIOError("refused"), "connect_error", True),  # a hard failure trips at once
    (ConnectTimeout("slow"), "connect_timeout", False),  # a timeout counts toward the threshold
    (TimeoutError(), "timeout", False),
])
async def test_open_upstream_books_each_failure_through_record_failure(exc, outcome, opens):
    a, b = node("http://a:1"), node("http://b:1")
    router, ranked = _router_with([a, b], exc)
    attempts = []
    with pytest.raises(NoHealthyNode):
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
