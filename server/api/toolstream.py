"""Streaming with tool_choice=auto: send content as it comes, but hold back anything that
may be the start of a tool call, so a client never sees ``<tool_call>{...`` as content."""

from __future__ import annotations


class ToolCallGate:
    def __init__(self, marker: str | None):
        self.marker = marker or None
        self.text = ""
        self.sent = 0
        self.in_call = False

    def feed(self, delta: str) -> str:
        """Add model text; return the content that is safe to send now."""
        self.text += delta
        if self.marker is None:
            return self._release(len(self.text))
        if self.in_call:
            return ""
        at = self.text.find(self.marker, self.sent)
        if at >= 0:
            self.in_call = True
            return self._release(at)
        return self._release(len(self.text) - self._partial_marker_suffix())

    def rest(self) -> str:
        """At the end, when no call was parsed: whatever was held back is content after all."""
        return self._release(len(self.text))

    def _partial_marker_suffix(self) -> int:
        m = self.marker or ""
        for k in range(min(len(m) - 1, len(self.text) - self.sent), 0, -1):
            if self.text.endswith(m[:k]):
                return k
        return 0

    def _release(self, upto: int) -> str:
        out = self.text[self.sent:upto]
        self.sent = max(self.sent, upto)
        return out
