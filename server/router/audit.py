"""Audit log: one JSON line per request (request id, key id, model, node, tokens, latency,
status). No prompt text unless ``--log-prompts``; never a header or a key."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

REDACT_KEYS = ("authorization", "api_key", "x-api-key", "password", "secret", "token_value")


def redact(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: ("[redacted]" if any(s in str(k).lower() for s in REDACT_KEYS) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


class AuditLog:
    def __init__(self, path: str | None, log_prompts: bool = False):
        self.log_prompts = log_prompts
        self._own = False
        self._fh: IO[str] | None
        if path is None:
            self._fh = None
        elif path == "-":
            self._fh = sys.stderr
        else:
            self._fh = open(path, "a", buffering=1, encoding="utf-8")  # line-buffered: one write per record
            self._own = True

    @property
    def enabled(self) -> bool:
        return self._fh is not None

    def write(self, record: dict[str, Any], prompt: Any = None) -> None:
        if self._fh is None:
            return
        record = {"ts": round(time.time(), 3), **record}
        if self.log_prompts and prompt is not None:
            record["prompt"] = redact(prompt)
        self._fh.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._own and self._fh is not None:
            self._fh.close()
        self._fh = None
