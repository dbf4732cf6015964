"""Gateway limits per client key."""

import pytest

from server.router.limits import KeyLimits, Limited, RateLimiter


def test_requests_per_minute_with_retry_after():
    rl = RateLimiter({"k": KeyLimits(requests_per_min=2)})
    for t in (0.0, 10.0):
        rl.release(rl.acquire("k", t), t, 1, 1, True)
    with pytest.raises(Limited) as info:
        rl.acquire("k", 20.0)
    assert info.value.retry_after == 40  # the first request leaves the window at t=60
    rl.acquire("k", 60.5)
    assert rl.usage["k"].rate_limited == 1


def test_max_concurrent():
    rl = RateLimiter({"k": KeyLimits(max_concurrent=1)})
    u = rl.acquire("k", 0)
    with pytest.raises(Limited):
        rl.acquire("k", 0)
    rl.release(u, 1, 0, 0, True)
    rl.acquire("k", 1)


def test_tokens_per_minute_charged_after_the_fact():
    rl = RateLimiter({"k": KeyLimits(tokens_per_min=100)})
    rl.release(rl.acquire("k", 0), 1, 30, 40, True)
    rl.release(rl.acquire("k", 2), 5, 20, 20, True)  # 110 used now
    with pytest.raises(Limited) as info:
        rl.acquire("k", 10)
    assert info.value.what == "tokens per minute" and info.value.retry_after == 51
    rl.acquire("k", 61.5)  # the first 70 tokens left the window


def test_unlimited_keys_still_count_usage():
    rl = RateLimiter()
    u = rl.acquire("anon", 0)
    rl.release(u, 1, 5, 7, False)
    assert rl.usage["anon"].view() == {"requests": 1, "prompt_tokens": 5, "completion_tokens": 7,
                                       "total_tokens": 12, "errors": 1, "rate_limited": 0, "inflight": 0}


@pytest.mark.parametrize("limits", [None, KeyLimits(requests_per_min=10_000), KeyLimits(max_concurrent=4)])
def test_per_request_logs_stay_bounded_without_a_token_limit(limits):
    """A busy key must not grow memory per request: 20 000 requests over ~3 hours keep no
    per-request entries unless a limit needs them, and then only one window's worth."""
    rl = RateLimiter({"k": limits} if limits else None)
    for i in range(20_000):
        t = i * 0.5
        rl.release(rl.acquire("k", t), t + 0.1, 10, 20, True)
    u = rl.usage["k"]
    assert u.requests == 20_000 and u.completion_tokens == 400_000  # usage still counted
    assert len(u.token_log) == 0
    assert len(u.request_times) <= (121 if limits else 0)  # pruned to the window


def test_token_log_keeps_one_window_under_a_token_limit():
    rl = RateLimiter({"k": KeyLimits(tokens_per_min=10**9)})
    for i in range(2_000):
        t = i * 1.0
        rl.release(rl.acquire("k", t), t + 0.1, 1, 1, True)
    assert len(rl.usage["k"].token_log) <= 61
