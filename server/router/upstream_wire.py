"""The wire side of the router's upstream pool: its errors, where a node's requests go,
and how a request is written (server/router/upstream.py reads the answers)."""

from __future__ import annotations

from urllib.parse import urlsplit


class UpstreamIOError(Exception):
    """The node's connection failed; the subclass says when."""


class ConnectFailed(UpstreamIOError):
    pass


class ConnectTimeout(UpstreamIOError):
    pass


class Disconnected(UpstreamIOError):
    """The node closed the connection before the response was complete."""


class BadResponse(UpstreamIOError):
    """The node sent something that is not HTTP/1.1."""


class ResponseTooLarge(BadResponse):
    """The node's response head or body went past the pool's caps."""


class Origin:
    """Where a node's requests go: scheme, host, port and the URL's path prefix."""

    __slots__ = ("host", "port", "tls", "prefix", "host_header", "key")

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/").encode()
        self.host_header = parts.netloc.encode()
        self.key = (self.tls, self.host, self.port)


def encode_request(method: str, origin: Origin, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [method.encode(), b" ", origin.prefix, path.encode(), b" HTTP/1.1\r\nhost: ", origin.host_header, b"\r\n"]
    if body or method not in ("GET", "HEAD"):
        lines += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} contains a line break")
        lines += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
    lines += [b"\r\n", body]
    return b"".join(lines)


__all__ = ["BadResponse", "ConnectFailed", "ConnectTimeout", "Disconnected", "Origin", "ResponseTooLarge",
           "UpstreamIOError", "encode_request"]
