"""``Idempotency-Key``: one generation per key, however often a client retries.

Shared by the router (around its proxy endpoints) and the node (as ASGI middleware on its
two generation routes); plain ASGI, no FastAPI.

- The key is scoped to the caller's key id (``scope["state"]["key_id"]``): one tenant never
  sees another's result. Keys are 1..255 visible ASCII characters, else 400
  ``invalid_idempotency_key``.
- The fingerprint is sha256 over the route, the key id and the exact body bytes. The same
  key with another fingerprint is 422 ``idempotency_key_reused`` and nothing runs.
- The first request runs detached from its client (so a client that times out and retries
  finds it still running): every sender of that key, the first included, reads the same
  transcript of ASGI messages. A retry while it runs ATTACHES: it gets what was sent so far
  and then the rest live (a stream continues; a whole answer is waited for).
- A finished response is stored for ``ttl_s`` (status, headers, the whole body or SSE
  transcript) when it succeeded: a 2xx (an error means nothing ran, or it failed: a retry
  runs again, as Stripe does), and for a stream only when it ended with ``data: [DONE]``. Past
  ``max_bytes`` only the outcome is stored and a later retry gets 409
  ``idempotency_result_too_large``. Replays carry ``Idempotency-Replayed: true``.
- The result is written before the last byte goes out: a client that got its answer can
  retry after the process died (SIGKILL) and get it back.
- A store shared by several processes (it has ``claim``: Redis) also holds a lease per key
  while one of them runs it: a sender of that key to another process waits for the stored
  result and gets it as a replay (after the whole run, not live), or runs it itself when the
  holder failed (nothing stored, lease released) or died (lease expired, ``LEASE_S``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.edge.errors import ApiError, ClientGone, InvalidRequest, KeyReused, ResultTooLarge
from server.edge.media import read_body
from server.edge.render import send_error
from server.store import Store

log = logging.getLogger("edgefleet.idempotency")

HEADER = b"idempotency-key"
REPLAYED = (b"idempotency-replayed", b"true")
MAX_KEY_LEN = 255
LEASE_S = 10.0  # a shared store's claim on a running key; renewed every third of it
POLL_S = 0.05  # how often a sender waiting on another process looks for the result


@dataclass(slots=True)
class Record:
    """A finished response as stored."""
    fingerprint: str
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    too_large: bool = False

    def pack(self) -> bytes:
        head = {"f": self.fingerprint, "s": self.status, "t": self.too_large,
                "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers]}
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def unpack(cls, raw: bytes) -> Record:
        head, _, body = raw.partition(b"\n")
        h = json.loads(head)
        return cls(h["f"], int(h["s"]), [(k.encode("latin-1"), v.encode("latin-1")) for k, v in h["h"]],
                   body, bool(h["t"]))


@dataclass(slots=True)
class Running:
    """One generation in flight: its transcript so far, read by every sender of the key."""
    fingerprint: str
    messages: list[Message] = field(default_factory=list)
    done: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None

    def append(self, message: Message) -> None:
        self.messages.append(message)
        self.wake.set()
        self.wake = asyncio.Event()

    def end(self) -> None:
        self.done = True
        self.wake.set()
        self.finished.set()


def check_key(raw: bytes) -> str:
    try:
        key = raw.decode("ascii")
    except UnicodeDecodeError:
        key = ""
    if not (0 < len(key) <= MAX_KEY_LEN) or any(not 0x20 <= ord(c) < 0x7F for c in key) or key != key.strip():
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters.",
                             param="Idempotency-Key", code="invalid_idempotency_key")
    return key


def fingerprint(path: str, key_id: str, body: bytes) -> str:
    h = hashlib.sha256(path.encode() + b"\0" + key_id.encode() + b"\0")
    h.update(body)
    return h.hexdigest()


def scoped_key(key_id: str, key: str) -> str:
    return "idem:" + hashlib.sha256(key_id.encode() + b"\0" + key.encode()).hexdigest()


def storable(status: int, headers: list[tuple[bytes, bytes]], body: bytes, complete: bool) -> bool:
    if not complete or not 200 <= status < 300:  # an error: nothing ran (or it failed), a retry runs
        return False
    ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    if ctype.startswith(b"text/event-stream"):
        return body.rstrip().endswith(b"data: [DONE]")
    return True


class Idempotency:
    def __init__(self, store: Store, ttl_s: float = 86_400.0, max_bytes: int = 1 << 20,
                 error_headers: dict[str, str] | None = None):
        self.store = store
        self.shared = callable(getattr(store, "claim", None))  # else this process's ``running`` is the lock
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.error_headers = error_headers or {}
        self.running: dict[str, Running] = {}
        self.stored = 0
        self.replayed = 0
        self.attached = 0

    @staticmethod
    def key_of(scope: Scope) -> bytes | None:
        for k, v in scope["headers"]:
            if k == HEADER:
                return v
        return None

    async def _error(self, send: Send, err: ApiError) -> None:
        for k, v in self.error_headers.items():
            err.headers.setdefault(k, v)
        await send_error(send, err)

    async def serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, raw_key: bytes) -> None:
        """Answer one request that carries an Idempotency-Key, running ``app`` at most once."""
        try:
            key = check_key(raw_key)
        except ApiError as err:
            await self._error(send, err)
            return
        try:
            body = await read_body(receive)
        except ClientGone:
            return
        key_id = scope.get("state", {}).get("key_id", "anonymous")
        sk = scoped_key(key_id, key)
        fp = fingerprint(scope["path"], key_id, body)
        run = self.running.get(sk)
        if run is None:
            record = await self._load(sk)
            run = self.running.get(sk)  # one may have started while the store answered
            if run is None and record is not None:
                await self._replay(record, fp, send)
                return
        if run is not None:
            if run.fingerprint != fp:
                await self._error(send, _reused())
                return
            self.attached += 1
            await _follow(run, send, replayed=True)
            return
        run = self.running[sk] = Running(fp)
        run.task = asyncio.create_task(self._run(app, dict(scope), body, run, sk))
        await _follow(run, send, replayed=False)
        # The answer is out; this request ends when its result is stored (shielded: a client
        # leaving does not stop the generation or the write).
        await asyncio.shield(run.task)

    async def _load(self, sk: str) -> Record | None:
        try:
            raw = await self.store.get(sk)
            return None if raw is None else Record.unpack(raw)
        except Exception as exc:  # a store that is down must not fail the request: it runs
            log.warning("idempotency store read failed (%s); running the request", exc)
            return None

    async def _replay(self, record: Record, fp: str, send: Send) -> None:
        if record.fingerprint != fp:
            await self._error(send, _reused())
            return
        if record.too_large:
            await self._error(send, ResultTooLarge(
                f"The result for this Idempotency-Key (HTTP {record.status}) was larger than the store keeps; "
                "use a new key to run the request again."))
            return
        self.replayed += 1
        await send({"type": "http.response.start", "status": record.status, "headers": [*record.headers, REPLAYED]})
        await send({"type": "http.response.body", "body": record.body, "more_body": False})

    async def _claim(self, sk: str) -> bool:
        try:
            return bool(await self.store.claim("claim:" + sk, LEASE_S))  # type: ignore[attr-defined]
        except Exception as exc:  # as for reads: a store that is down must not fail the request
            log.warning("idempotency store claim failed (%s); running the request", exc)
            return True

    async def _claim_or_follow(self, run: Running, sk: str) -> bool:
        """With a shared store: True when this process holds the key's lease and runs it;
        False when another process ran it and its stored answer is in ``run``."""
        while True:
            if await self._claim(sk):
                record = await self._load(sk)  # it may have finished between our first look and the claim
                if record is None:
                    return True
                await self._release(sk)
            else:
                await asyncio.sleep(POLL_S)
                record = await self._load(sk)
                if record is None:
                    continue

            async def collect(message: Message) -> None:
                run.append(message)
            await self._replay(record, run.fingerprint, collect)
            return False

    async def _release(self, sk: str) -> None:
        try:
            await self.store.delete("claim:" + sk)
        except Exception as exc:
            log.warning("idempotency store release failed (%s); the lease expires in %.0f s", exc, LEASE_S)

    async def _renew(self, sk: str) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 3)
            try:
                await self.store.put("claim:" + sk, b"1", LEASE_S)
            except Exception as exc:
                log.warning("idempotency store lease renewal failed (%s)", exc)

    async def _run(self, app: ASGIApp, scope: Scope, body: bytes, run: Running, sk: str) -> None:
        claimed = renew = None
        try:
            if self.shared:
                claimed = await self._claim_or_follow(run, sk)
                if not claimed:
                    return
                renew = asyncio.create_task(self._renew(sk))
            await self._run_app(app, scope, body, run, sk)
        finally:
            if renew is not None:
                renew.cancel()
            run.end()
            self.running.pop(sk, None)
            if claimed:
                await self._release(sk)

    async def _run_app(self, app: ASGIApp, scope: Scope, body: bytes, run: Running, sk: str) -> None:
        given = False

        async def receive() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await run.finished.wait()  # nobody leaves: the generation finishes for the retry
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await self._store([*run.messages, message], run.fingerprint, sk)  # durable, then the last byte
            run.append(message)

        try:
            await app(scope, receive, send)
        except Exception:
            log.exception("unhandled error under Idempotency-Key")
            if not run.messages:
                run.append({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json")]})
                run.append({"type": "http.response.body", "more_body": False,
                            "body": b'{"error":{"message":"Internal server error.","type":"server_error",'
                                    b'"param":null,"code":"internal_error"}}'})

    async def _store(self, messages: list[Message], fp: str, sk: str) -> None:
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        if start is None:
            return
        parts = [m.get("body", b"") for m in messages if m["type"] == "http.response.body"]
        complete = any(m["type"] == "http.response.body" and not m.get("more_body") for m in messages)
        body = b"".join(parts)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        if not storable(start["status"], headers, body, complete):
            return
        too_large = len(body) > self.max_bytes
        record = Record(fp, start["status"], headers, b"" if too_large else body, too_large)
        try:
            await self.store.put(sk, record.pack(), self.ttl_s)
            self.stored += 1
        except Exception as exc:
            log.warning("idempotency store write failed (%s); a retry will run again", exc)


def _reused() -> KeyReused:
    return KeyReused("This Idempotency-Key was already used with a different request body or route.",
                     param="Idempotency-Key")


async def _follow(run: Running, send: Send, replayed: bool) -> None:
    """Send the transcript from the start, then live until it ends. A client that leaves
    stops reading; the generation goes on."""
    i = 0
    try:
        while True:
            while i < len(run.messages):
                m = run.messages[i]
                if replayed and m["type"] == "http.response.start" and REPLAYED not in m.get("headers", []):
                    m = {**m, "headers": [*m.get("headers", []), REPLAYED]}
                await send(m)
                i += 1
            if run.done:
                return
            await run.wake.wait()
    except OSError:
        return



class IdempotencyMiddleware:
    """For the node: requests to ``paths`` that carry the header go through :class:`Idempotency`."""

    def __init__(self, app: ASGIApp, idempotency: Idempotency, paths: frozenset[str] | set[str]):
        self.app = app
        self.idem = idempotency
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            raw = Idempotency.key_of(scope)
            if raw is not None:
                await self.idem.serve(self.app, scope, receive, send, raw)
                return
        await self.app(scope, receive, send)


__all__ = ["Idempotency", "IdempotencyMiddleware", "KeyReused", "Record", "ResultTooLarge", "check_key",
           "fingerprint", "scoped_key", "storable"]
