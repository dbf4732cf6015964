"""Per-client-key gateway limits: requests/min, tokens/min, max concurrent; and usage totals.

Sliding one-minute windows (exact, small: one entry per request). Tokens are only known
when a request ends, so the token limit admits while the last minute's total is under it
and charges the real count afterwards.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass(slots=True)
class KeyLimits:
    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    max_concurrent: int | None = None
    priority_default: int | None = None  # used when a request gives none (server/router/session.py)
    priority_min: int | None = None  # the most urgent priority this key may use


@dataclass(slots=True)
class KeyUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    rate_limited: int = 0
    inflight: int = 0
    request_times: deque[float] = field(default_factory=deque)
    token_log: deque[tuple[float, int]] = field(default_factory=deque)  # only under a token limit
    tracks_tokens: bool = False

    def view(self) -> dict[str, int]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "errors": self.errors, "rate_limited": self.rate_limited, "inflight": self.inflight}


class Limited(Exception):
    def __init__(self, what: str, retry_after: int):
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, limits: dict[str, KeyLimits] | None = None):
        self.limits = limits or {}
        self.usage: dict[str, KeyUsage] = {}

    def _usage(self, key_id: str) -> KeyUsage:
        u = self.usage.get(key_id)
        if u is None:
            lim = self.limits.get(key_id)
            u = self.usage[key_id] = KeyUsage(tracks_tokens=lim is not None and lim.tokens_per_min is not None)
        return u

    def acquire(self, key_id: str, now: float) -> KeyUsage:
        """Admit one request for ``key_id`` or raise :class:`Limited`. Pair with :meth:`release`."""
        u = self._usage(key_id)
        lim = self.limits.get(key_id)
        if lim is not None:
            cutoff = now - WINDOW_S
            while u.request_times and u.request_times[0] <= cutoff:
                u.request_times.popleft()
            while u.token_log and u.token_log[0][0] <= cutoff:
                u.token_log.popleft()
            try:
                if lim.max_concurrent is not None and u.inflight >= lim.max_concurrent:
                    raise Limited("concurrent requests", 1)
                if lim.requests_per_min is not None and len(u.request_times) >= lim.requests_per_min:
                    raise Limited("requests per minute", _after(u.request_times[0] + WINDOW_S - now))
                if lim.tokens_per_min is not None:
                    used = sum(t for _, t in u.token_log)
                    if used >= lim.tokens_per_min:
                        raise Limited("tokens per minute", _after(_tokens_free_at(u.token_log, used, lim.tokens_per_min) - now))
            except Limited:
                u.rate_limited += 1
                raise
            u.request_times.append(now)
        u.requests += 1
        u.inflight += 1
        return u

    def release(self, usage: KeyUsage, now: float, prompt_tokens: int, completion_tokens: int, ok: bool) -> None:
        usage.inflight = max(0, usage.inflight - 1)
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        if not ok:
            usage.errors += 1
        # Only a token limit reads the log (and prunes it on the next acquire): for any other
        # key it would grow by one entry per request for the life of the router.
        if usage.tracks_tokens and prompt_tokens + completion_tokens:
            usage.token_log.append((now, prompt_tokens + completion_tokens))


def _after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _tokens_free_at(log: deque[tuple[float, int]], used: int, limit: int) -> float:
    """When enough old entries leave the window to bring usage under the limit."""
    for t, n in log:
        used -= n
        if used < limit:
            return t + WINDOW_S
    return log[-1][0] + WINDOW_S if log else 0.0
