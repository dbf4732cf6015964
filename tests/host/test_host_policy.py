"""The model host's pure decisions: keep_alive parsing, placement and eviction, idle expiry."""

from __future__ import annotations

import pytest

from server.host_policy import (
    GiB,
    Resident,
    backoff_s,
    idle_expired,
    parse_bytes,
    parse_keep_alive,
    place,
)


@pytest.mark.parametrize(("value", "seconds"), [
    ("5m", 300.0), ("30s", 30.0), ("1h", 3600.0), ("1.5m", 90.0), ("250ms", 0.25), ("0", 0.0), (0, 0.0),
    ("-1", None), (-1, None), ("-5m", None), (12, 12.0), ("7", 7.0), (" 2h ", 7200.0),
])
def test_keep_alive_follows_ollama(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m", "", True, "inf", "1e999", 10**400, -(10**400)])
def test_keep_alive_rejects_nonsense(value):
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(value)


def test_bytes_parse_binary_units():
    assert parse_bytes("8GiB") == 8 * GiB
    assert parse_bytes("512m") == 512 << 20
    assert parse_bytes("1.5g") == int(1.5 * GiB)
    assert parse_bytes(1000) == 1000
    with pytest.raises(ValueError):
        parse_bytes("lots")


def r(name, gib, *, pinned=False, busy=False, last=0.0):
    return Resident(name, int(gib * GiB), pinned, busy, last)


def test_fits_without_eviction():
    p = place("c", 2 * GiB, 10 * GiB, [r("a", 3), r("b", 3)])
    assert p.fits and p.evict == []


def test_evicts_least_recently_used_idle_first_and_only_as_many_as_needed():
    residents = [r("new", 3, last=30.0), r("old", 3, last=10.0), r("mid", 3, last=20.0)]
    p = place("c", 3 * GiB, 10 * GiB, residents)  # 1 GiB free, needs 3: one eviction is enough
    assert p.fits and p.evict == ["old"]
    p = place("c", 6 * GiB, 10 * GiB, residents)
    assert p.fits and p.evict == ["old", "mid"]


def test_pinned_and_busy_models_are_never_evicted():
    residents = [r("pinned", 4, pinned=True, last=0.0), r("busy", 4, busy=True, last=1.0), r("idle", 1, last=5.0)]
    p = place("c", 3 * GiB, 10 * GiB, residents)  # 1 free + 1 from idle = 2 < 3
    assert not p.fits and p.evict == []
    assert "pinned" in p.reason and "busy" in p.reason and "'c' needs 3.00 GiB" in p.reason


def test_a_model_larger_than_the_budget_is_refused_naming_both():
    p = place("huge", 20 * GiB, 10 * GiB, [])
    assert not p.fits and "huge" in p.reason and "10.00 GiB" in p.reason


def test_the_model_itself_is_not_counted_against_its_own_room():
    assert place("a", 6 * GiB, 10 * GiB, [r("a", 6), r("b", 4)]).fits


def test_idle_expiry():
    assert idle_expired(0.0, False, False, idle_since=10.0, now=10.0)
    assert not idle_expired(60.0, False, False, idle_since=10.0, now=69.0)
    assert idle_expired(60.0, False, False, idle_since=10.0, now=70.0)
    assert not idle_expired(None, False, False, idle_since=0.0, now=1e9)  # -1: never
    assert not idle_expired(0.0, True, False, idle_since=0.0, now=1e9)  # pinned
    assert not idle_expired(0.0, False, True, idle_since=0.0, now=1e9)  # busy


def test_backoff_doubles_and_caps():
    assert [backoff_s(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff_s(50) == 300.0
