"""Security at the ASGI edge, shared by the node and the router.

- Auth is default-deny: every route needs a key except the exact paths in ``exempt``
  (``/health``, ``/ready``); no prefix matching, so ``//v1/..`` or ``%2Fv1`` gain nothing.
- Keys are kept only as SHA-256 digests and compared with ``hmac.compare_digest``.
- DNS-rebinding guard: on a loopback bind, the Host header must name loopback; a browser
  Origin must be loopback or explicitly allowed.
- Body limit: a declared Content-Length over the limit is refused before reading; a
  chunked body is counted as it streams and refused as soon as it passes the limit.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.config import is_loopback
from server.edge.errors import ApiError, AuthenticationError, HeadersTooLarge, PayloadTooLarge, PermissionDenied
from server.edge.render import send_error

EXEMPT_PATHS = frozenset({"/health", "/ready"})
MAX_HEADERS = 128
MAX_HEADER_BYTES = 32 * 1024


def hash_key(key: str) -> str:
    """The form keys are stored in: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(slots=True)
class ApiKey:
    key_id: str
    digest: str  # "sha256:<hex>"
    admin: bool = False  # may see fleet internals (the router's node URLs, /metrics, every key's usage)


@dataclass
class KeyStore:
    """Accepted client keys. Empty means auth is off (only allowed on loopback binds)."""

    keys: list[ApiKey] = field(default_factory=list)
    # Keys already verified: a SHA-256 through OpenSSL costs ~30 us on a cold cache, on
    # every request. Indexed by Python's per-process keyed string hash, confirmed with
    # compare_digest; only accepted keys are kept, and at most VERIFIED_MAX.
    _verified: dict[int, tuple[bytes, str]] = field(default_factory=dict, repr=False, compare=False)
    VERIFIED_MAX: ClassVar[int] = 1024

    @classmethod
    def single(cls, key: str | None, key_id: str = "default") -> KeyStore:
        return cls([ApiKey(key_id, hash_key(key))] if key else [])

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def is_admin(self, key_id: str) -> bool:
        return any(k.admin for k in self.keys if k.key_id == key_id)

    def replace(self, keys: list[ApiKey]) -> None:
        """New keys in place (a reload): a revoked key is refused from the next request."""
        self.keys = list(keys)
        self._verified.clear()

    def verify(self, presented: str) -> str | None:
        """Return the key id for a presented key, else None. Checks every key (no early exit)."""
        raw = presented.encode()
        hit = self._verified.get(hash(presented))
        if hit is not None and hmac.compare_digest(hit[0], raw):
            return hit[1]
        digest = hash_key(presented)
        found = None
        for k in self.keys:
            if hmac.compare_digest(digest, k.digest):
                found = k.key_id
        if found is not None:
            if len(self._verified) >= self.VERIFIED_MAX:
                self._verified.clear()
            self._verified[hash(presented)] = (raw, found)
        return found


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    raw = headers.get(b"authorization")
    if raw is not None:
        scheme, _, token = raw.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    api_key = headers.get(b"x-api-key")
    return api_key.decode("latin-1").strip() if api_key else None


def _hostname(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class _BodyTooLarge(StarletteHTTPException):
    """An HTTPException so that body parsers (FastAPI's) re-raise it instead of calling it a
    parse error; the app's handler renders it as 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"Request body exceeds {limit} bytes.")


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, *, keys: KeyStore, loopback_bind: bool,
                 allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = (),
                 max_body_bytes: int = 4 << 20, exempt: Iterable[str] = EXEMPT_PATHS,
                 body_first: Iterable[str] = (), on_reject: Callable[[Scope, ApiError], None] | None = None):
        """``body_first``: paths whose handler reads the whole body before it answers, so an
        oversized body is always caught before a response starts; their ``send`` is passed
        through unwrapped (one coroutine layer less per streamed chunk). ``on_reject``: told
        of every request refused here (401, 403, 413, 431), e.g. to audit it; must not raise."""
        self.app = app
        self.keys = keys
        self.loopback_bind = loopback_bind
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.allowed_origins = {o.lower().rstrip("/") for o in allowed_origins}
        self.max_body_bytes = max_body_bytes
        self.exempt = frozenset(exempt)
        self.body_first = frozenset(body_first)
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope["headers"]
        headers = dict(raw_headers)
        try:
            if len(raw_headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in raw_headers) > MAX_HEADER_BYTES:
                raise HeadersTooLarge("Too many or too large request headers.")
            self._check_host_and_origin(headers)
            if scope["path"] not in self.exempt:
                self._check_auth(scope, headers)
            self._check_declared_length(headers)
        except ApiError as err:
            if self.on_reject is not None:
                self.on_reject(scope, err)
            await send_error(send, err, close=True)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, send if scope["path"] in self.body_first else tracking_send)
        except _BodyTooLarge:
            if not started:
                err = PayloadTooLarge(f"Request body exceeds {self.max_body_bytes} bytes.")
                if self.on_reject is not None:
                    self.on_reject(scope, err)
                await send_error(send, err, close=True)

    def _check_host_and_origin(self, headers: dict[bytes, bytes]) -> None:
        host = _hostname(headers.get(b"host", b"").decode("latin-1"))
        if self.loopback_bind and not (is_loopback(host) or host in self.allowed_hosts):
            raise PermissionDenied("Host not allowed.", code="host_not_allowed")
        if not self.loopback_bind and self.allowed_hosts and host not in self.allowed_hosts:
            raise PermissionDenied("Host not allowed.", code="host_not_allowed")
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1").lower().rstrip("/")
            origin_host = urlsplit(text).hostname or ""
            if text not in self.allowed_origins and not is_loopback(origin_host):
                raise PermissionDenied("Origin not allowed.", code="origin_not_allowed")

    def _check_auth(self, scope: Scope, headers: dict[bytes, bytes]) -> None:
        if not self.keys.enabled:
            return
        presented = _bearer(headers)
        key_id = self.keys.verify(presented) if presented else None
        if key_id is None:
            raise AuthenticationError("Missing or invalid API key.",
                                      headers={"WWW-Authenticate": "Bearer"})
        state = scope.setdefault("state", {})
        state["key_id"] = key_id
        state["admin"] = self.keys.is_admin(key_id)

    def _check_declared_length(self, headers: dict[bytes, bytes]) -> None:
        declared = headers.get(b"content-length")
        if declared is None:
            return
        try:
            length = int(declared)
        except ValueError:
            raise ApiError("Invalid Content-Length.") from None
        if length > self.max_body_bytes:
            raise PayloadTooLarge(f"Request body of {length} bytes exceeds {self.max_body_bytes} bytes.")
