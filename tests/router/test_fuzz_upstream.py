"""Byte-level fuzzing of the upstream pool's response parsing (bounded for the suite; the
long run is scripts/fuzz_upstream.py). The properties are in tests/router/fuzz_wire.py."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.router.upstream import BadResponse, ResponseTooLarge
from tests.router import fuzz_wire as fw

BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CAPS = {"read_timeout": None, "max_head_bytes": 1024, "max_headers": 10, "max_body_bytes": 100}


@BOUNDED
@given(st.data())
def test_a_well_formed_response_round_trips_however_split(data):
    fw.check_well_formed(data)


@BOUNDED
@given(st.data())
def test_hostile_bytes_raise_only_pool_errors_within_the_caps(data):
    fw.check_hostile(data)


def test_regression_a_body_without_length_past_the_cap_fails_even_once_the_connection_closes():
    """Found writing these properties (split vs whole): a body ending at EOF that went past the cap was failed, but the
    close that followed marked it complete, so a slow reader saw a truncated body as whole."""
    raw = b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 150
    for pieces in ([raw], fw.split(raw, [30, 100])):
        got = fw.read(CAPS, pieces)
        assert got.error is ResponseTooLarge and got.body == b""


def test_regression_bytes_after_a_complete_response_are_not_parsed_into_it():
    """Found writing these properties (split vs whole): a second response glued after the first, in a later read, was
    parsed into the first (its status and body replaced or extended it)."""
    first = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    extra = b"HTTP/1.1 500 Oops\r\ncontent-length: 3\r\n\r\nbad"
    for pieces in ([first + extra], [first, extra]):
        got = fw.read(CAPS, pieces)
        assert (got.error, got.status, got.body, got.pooled) == (None, 200, b"ok", 0)


def test_regression_a_byte_after_a_response_in_the_packet_the_head_cap_cut_closes_the_connection():
    """Found by the 10-minute fuzz run: when the head cap cut a packet holding a whole
    response and one more byte, the byte was dropped and the connection went back to the
    pool (split at the head, the same bytes closed it)."""
    raw = b"HTTP/1.1 200 OK\r\n0: 000\r\ncontent-length: 7\r\n\r\n" + b"\x00" * 8
    caps = {"read_timeout": None, "max_head_bytes": 53, "max_headers": 2, "max_body_bytes": 7}
    for pieces in ([raw], fw.split(raw, [46])):
        got = fw.read(caps, pieces)
        assert (got.error, got.status, got.body, got.pooled) == (None, 200, b"\x00" * 7, 0)


def test_an_interim_or_made_up_status_is_a_bad_response():
    """A 1xx the router never asked for (it sends no Expect) would have been taken as the
    answer: its empty body relayed to the client as status 100."""
    for raw in (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                b"HTTP/1.1 999 Nine\r\ncontent-length: 2\r\n\r\nok"):
        got = fw.read(CAPS, [raw])
        assert got.error is BadResponse and got.status == 0


def test_bytes_past_a_cap_and_malformed_fail_either_way_however_split():
    """Found by the fourth long run: a head over its header cap (0 here) whose next header
    name holds a NUL fails as ResponseTooLarge when a read ends inside that name (httptools
    hands a header over once the next one starts) and as BadResponse when it does not. Both
    are refusals of the same response with the connection closed; the property compares them
    as one kind."""
    raw = b"HTTP/1.1 200 \x00hatever It Says\r\n0: \r\nc\x00ntent-length: 0\r\n\r\n"
    caps = {"read_timeout": None, "max_head_bytes": 38, "max_headers": 0, "max_body_bytes": 0}
    split, whole = fw.read(caps, fw.split(raw, [37])), fw.read(caps, [raw])
    assert issubclass(split.error, BadResponse) and issubclass(whole.error, BadResponse)
    assert split.same_failure_kind() == whole.same_failure_kind() and split.pooled == whole.pooled == 0
