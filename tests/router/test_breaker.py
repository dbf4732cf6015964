"""Circuit breaker (RELIABILITY E5): open after N failures, half-open probe, close after M."""

from server.router.breaker import CircuitBreaker


def test_opens_after_n_consecutive_failures():
    b = CircuitBreaker(failure_threshold=3, success_threshold=2, open_s=5)
    b.record_failure(0)
    b.record_failure(1)
    b.record_success(2)  # resets the count
    b.record_failure(3)
    b.record_failure(4)
    assert b.allows_requests(4)
    b.record_failure(5)
    assert b.state == "open" and not b.allows_requests(5)


def test_half_open_after_timeout_then_closes_after_m_successes():
    b = CircuitBreaker(failure_threshold=1, success_threshold=2, open_s=5)
    b.record_failure(0)
    assert b.poll_state(4.9) == "open"
    assert b.poll_state(5.0) == "half_open" and not b.allows_requests(5.0)
    b.record_success(5.1)
    assert b.state == "half_open"
    b.record_success(5.2)
    assert b.state == "closed" and b.allows_requests(5.2)


def test_failure_while_half_open_reopens():
    b = CircuitBreaker(failure_threshold=2, success_threshold=2, open_s=1)
    b.trip(0)
    assert b.poll_state(1.5) == "half_open"
    b.record_success(1.6)
    b.record_failure(1.7)  # flapping: back to open, timer restarted
    assert b.state == "open" and b.opened_at == 1.7
    assert b.poll_state(2.5) == "open"
    assert b.trips == 2


def test_success_while_open_does_not_close():
    b = CircuitBreaker(failure_threshold=1, success_threshold=1, open_s=10)
    b.record_failure(0)
    b.record_success(1)
    assert b.state == "open"
