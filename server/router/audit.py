"""Audit log: one JSON line per request (request id, key id, client address, model, node,
tokens, latency, status, error). No prompt text unless ``--log-prompts``; never a header or
a key.

Written off the event loop: :meth:`AuditLog.write` serializes the record and puts the line
on a bounded queue; one writer thread appends it. A full disk, a full queue or a removed
file never fails or slows a request: the line is dropped, counted
(``edgefleet_router_audit_write_errors_total``) and warned about once in the log.
:meth:`AuditLog.reopen` (SIGHUP, for logrotate) makes the writer close and reopen the path
before its next line.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

REDACT_KEYS = ("authorization", "api_key", "x-api-key", "password", "secret", "token_value")
QUEUE_LINES = 10_000  # lines waiting for the writer before new ones are dropped (and counted)

log = logging.getLogger("edgefleet.router")

_REOPEN = object()
_STOP = object()


def redact(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: ("[redacted]" if any(s in str(k).lower() for s in REDACT_KEYS) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


class AuditLog:
    def __init__(self, path: str | None, log_prompts: bool = False,
                 on_error: Callable[[], None] | None = None, max_queue: int = QUEUE_LINES):
        self.path = path
        self.log_prompts = log_prompts
        self.on_error = on_error  # counts a lost line (the metric); called from any thread
        self.errors = 0
        self._warned = False
        self._fh: IO[str] | None = None
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        if path is not None:
            self._open()
            self._thread = threading.Thread(target=self._run, name="edgefleet-audit", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def write(self, record: dict[str, Any], prompt: Any = None) -> None:
        """Queue one record; never raises, never blocks."""
        if self.path is None:
            return
        record = {"ts": round(time.time(), 3), **record}
        if self.log_prompts and prompt is not None:
            record["prompt"] = redact(prompt)
        try:
            line = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"
            self._queue.put_nowait(line)
        except queue.Full:
            self._failed("the audit queue is full (the writer cannot keep up)")
        except (TypeError, ValueError) as exc:
            self._failed(f"an audit record could not be serialized: {exc}")

    def reopen(self) -> None:
        """Close and reopen the file before the next line (after logrotate moved it)."""
        if self.path is not None and self.path != "-":
            try:
                self._queue.put_nowait(_REOPEN)
            except queue.Full:
                self._failed("the audit queue is full; reopen skipped")

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued line has been handed to the file (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        if self._thread is not None:
            self.flush()
            try:
                self._queue.put(_STOP, timeout=1.0)
            except queue.Full:
                pass
            self._thread.join(timeout=2.0)
            self._thread = None
        self._close_file()
        self.path = None

    # --- the writer thread -------------------------------------------------------------

    def _open(self) -> None:
        if self.path == "-":
            self._fh = sys.stderr
            return
        try:
            self._fh = open(self.path, "a", buffering=1, encoding="utf-8")  # type: ignore[arg-type]
        except OSError as exc:
            self._fh = None
            self._failed(f"cannot open {self.path}: {exc}")

    def _close_file(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None and fh is not sys.stderr:
            try:
                fh.close()
            except OSError:
                pass

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if item is _REOPEN:
                    self._close_file()
                    self._open()
                    continue
                if self._fh is None:
                    self._open()  # a failed open is retried at the next line
                    if self._fh is None:
                        continue
                try:
                    self._fh.write(item)
                    self._fh.flush()
                except (OSError, ValueError) as exc:
                    self._failed(f"cannot write to {self.path}: {exc}")
            finally:
                self._queue.task_done()

    def _failed(self, why: str) -> None:
        self.errors += 1
        if self.on_error is not None:
            try:
                self.on_error()
            except Exception:  # noqa: BLE001 - counting must not fail the writer
                pass
        if not self._warned:
            self._warned = True
            log.warning("audit log: %s; lines are being dropped (counted in "
                        "edgefleet_router_audit_write_errors_total; this warning is shown once)", why)
