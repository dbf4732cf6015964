"""Incremental detokenization with stop strings.

Text is decoded over a sliding window of ids (a few tokens of context before the new ones)
so that multi-byte characters split across tokens and leading-space rules come out right
without decoding the whole output every step. While stop strings are active, the last
``max(len(stop)) - 1`` characters are held back: they might be the start of a stop string
that the client must never see.
"""

from __future__ import annotations

from typing import Any

CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: list[str],
                 include_stop: bool = False, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.stop = [s for s in stop if s]
        self.include_stop = include_stop
        self.skip_special = skip_special_tokens
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""
        self.sent = 0  # characters of self.text already handed out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def add(self, token_id: int) -> str | None:
        """Append one token; returns the stop string if it completed one (text is cut)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return None  # an incomplete character: wait for more bytes
        new = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        before = len(self.text)
        self.text += new
        return self._check_stop(before)

    def _check_stop(self, before: int) -> str | None:
        for s in self.stop:
            idx = self.text.find(s, max(0, before - len(s) + 1))
            if idx >= 0:
                self.text = self.text[:idx + len(s)] if self.include_stop else self.text[:idx]
                return s
        return None

    def take(self, finished: bool) -> str:
        """Text not yet handed out (all of it once finished)."""
        end = len(self.text) if finished else max(self.sent, len(self.text) - self.hold)
        out = self.text[self.sent:end]
        self.sent = end
        return out
