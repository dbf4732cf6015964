"""What the router reads out of a node's answer while relaying it untouched: how many
``data: {`` events a stream carried and the node's last ``usage`` object.

Both are read from bytes a node sent, so a node (rogue, buggy, or just splitting its
writes differently) must never make them raise, and the result must not depend on where
the node's socket happened to cut the stream: an event split across two reads counts
once, and a usage line split across reads is still found (the fuzz tests in
tests/router/test_fuzz_relay.py hold both).
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_LINE = 64 * 1024  # a longer SSE line still counts as an event, but is not parsed for usage
_EVENT = b"data: {"
_NL_EVENT = b"\n" + _EVENT
# A "usage" key, not the word in generated text: inside a JSON string a quote is escaped, so
# the text "usage" reads "usage" then '}' or ',', never ':' (a model writing usage is common).
# JSON allows whitespace before the colon; _USAGE is the cheap test that a chunk may hold one.
_USAGE = b'"usage"'
_USAGE_KEY = re.compile(rb'"usage"\s*:')


class SseTally:
    """Scans a relayed SSE body as it passes: ``events`` (lines starting ``data: {``) and the
    last such line mentioning ``"usage"``. Linear in the bytes fed, whatever the splitting: a
    line cut by a read is kept in pieces (at most ``MAX_LINE`` bytes) until its end arrives."""

    __slots__ = ("events", "usage_line", "_parts", "_size", "_long", "_long_event")

    def __init__(self) -> None:
        self.events = 0
        self.usage_line: bytes | None = None
        self._parts: list[bytes] = []  # the current unfinished line
        self._size = 0
        self._long = False  # the unfinished line is past MAX_LINE (its bytes are dropped)
        self._long_event = False  # ... and it starts like an event

    def feed(self, chunk: bytes) -> None:
        if chunk[-1:] == b"\n" and not self._size and not self._long:  # whole lines: the usual case, inline
            self.events += chunk.count(_NL_EVENT) + chunk.startswith(_EVENT)
            if _USAGE in chunk:
                self._usage_in(chunk)
            return
        nl = chunk.rfind(b"\n")
        if nl < 0:
            self._grow(chunk)
            return
        block = chunk if nl == len(chunk) - 1 else chunk[:nl + 1]
        if self._size or self._long:  # the first line of this chunk ends the one in progress
            first = block.find(b"\n")
            self._grow(block[:first])
            self._end_partial()
            block = block[first + 1:]
        if block:
            self._lines(block)
        if nl != len(chunk) - 1:
            self._grow(chunk[nl + 1:])

    def close(self) -> None:
        """The stream ended: a last line without its newline still counts."""
        if self._size or self._long:
            self._end_partial()

    def usage(self) -> dict[str, Any] | None:
        """The last usage object the stream carried, or None (absent or not valid JSON)."""
        return usage_of(self.usage_line[6:]) if self.usage_line is not None else None

    def _lines(self, block: bytes) -> None:
        """Whole lines (``block`` starts a line and ends with a newline)."""
        self.events += block.count(_NL_EVENT) + block.startswith(_EVENT)
        if _USAGE in block:
            self._usage_in(block)

    def _usage_in(self, block: bytes) -> None:
        for line in reversed(block.split(b"\n")):
            if line.startswith(_EVENT) and len(line) <= MAX_LINE and _USAGE_KEY.search(line):
                self.usage_line = line
                return

    def _grow(self, piece: bytes) -> None:
        if self._long or not piece:
            return
        self._parts.append(piece)
        self._size += len(piece)
        if self._size > MAX_LINE:
            self._long_event = b"".join(self._parts).startswith(_EVENT)
            self._long = True
            self._parts.clear()

    def _end_partial(self) -> None:
        if self._long:
            self.events += self._long_event
        else:
            line = b"".join(self._parts)
            if line.startswith(_EVENT):
                self.events += 1
                if _USAGE_KEY.search(line):
                    self.usage_line = line
        self._parts.clear()
        self._size = 0
        self._long = self._long_event = False


def usage_of(body: bytes) -> dict[str, Any] | None:
    """``body["usage"]`` when ``body`` is a JSON object carrying a usage object; None for
    anything else a node may send (not JSON, nested past the parser's depth, not an object)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None


def count_of(value: Any) -> int | None:
    """A token count as a node reports it: a non-negative int (bools and floats are not)."""
    return value if type(value) is int and value >= 0 else None


__all__ = ["MAX_LINE", "SseTally", "count_of", "usage_of"]
