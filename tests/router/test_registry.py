"""server/router/registry.py: Node.record_failure, the one rule for a failed request."""

import pytest

from tests.router.helpers import node


@pytest.mark.parametrize("outcome", ["connect_error", "upstream_disconnected"])
def test_a_hard_failure_trips_the_breaker_at_once(outcome):
    n = node("http://a:1")
    n.record_failure(outcome, now=10.0)
    assert n.breaker.state == "open" and n.breaker.opened_at == 10.0 and n.breaker.trips == 1
    assert n.failures == 1 and n.last_error == outcome
    assert not n.is_ready(10.0)


@pytest.mark.parametrize("outcome", ["connect_timeout", "timeout", "upstream_timeout"])
def test_a_timeout_counts_toward_the_threshold(outcome):
    n = node("http://a:1")  # failure_threshold 3
    n.record_failure(outcome, now=1.0)
    n.record_failure(outcome, now=1.1)
    assert n.breaker.state == "closed" and n.breaker.failures == 2 and n.is_ready(1.1)
    n.record_failure(outcome, now=1.2)
    assert n.breaker.state == "open" and n.failures == 3 and n.last_error == outcome
