"""The one Content-Type rule for JSON bodies, on the node and the router alike.

Accepted: ``application/json`` and any ``application/<something>+json`` (RFC 6839), with or
without parameters (``; charset=utf-8``), in any letter case. Anything else, and a missing
Content-Type, is a 415: a client that sends JSON says so. Also the one reader of a plain
ASGI request body (the router's proxy and the idempotency layer).
"""

from __future__ import annotations

from starlette.types import Receive

from server.edge.errors import ClientGone, UnsupportedMediaType


def is_json(content_type: str | bytes | None) -> bool:
    if content_type is None:
        return False
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        return True
    kind, _, sub = media.partition("/")
    return kind == "application" and sub.endswith("+json") and len(sub) > len("+json")


def require_json(content_type: str | bytes | None) -> None:
    if not is_json(content_type):
        raise UnsupportedMediaType("Content-Type must be application/json.")


async def read_body(receive: Receive) -> bytes:
    """A plain ASGI request body, whole; ClientGone if the client leaves while sending it."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return parts[0] if len(parts) == 1 else b"".join(parts)
