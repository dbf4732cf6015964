"""The one renderer of the OpenAI error envelope: every error that reaches the wire, from the
node or the router, before or after the first byte, is written by a function here.

- :func:`envelope`: the body bytes, ``{"error": {message, type, param, code}}``.
- :func:`error_response`: a Starlette response, for routes and exception handlers.
- :func:`send_error`: the same on bare ASGI ``send`` (the security middleware, the proxy).
- :func:`sse_error_event`: the in-band SSE event for an error after the first byte.
- :func:`install_handlers`: the exception handlers both apps install.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from server.edge.errors import (ApiError, InternalError, NotFound, PayloadTooLarge, UnsupportedMediaType,
                                sanitize, validation_error)

log = logging.getLogger("edgefleet.api")


def envelope(err: ApiError, extra: dict[str, Any] | None = None) -> bytes:
    """``extra``: fields beside ``error`` (the node's /ready adds ``state``)."""
    body = err.body() if not extra else {**err.body(), **extra}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def error_response(err: ApiError, extra: dict[str, Any] | None = None) -> Response:
    return Response(envelope(err, extra), status_code=err.status_code, headers=err.headers,
                    media_type="application/json")


async def send_error(send: Send, err: ApiError, *, close: bool = False) -> None:
    """Answer with ``err`` on a bare ASGI ``send``; ``close``: ask the client to drop the
    connection (a refused request whose body may still be in flight)."""
    body = envelope(err)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def sse_error_event(err: ApiError) -> bytes:
    """After the first byte the status line is gone: the error travels as one SSE event."""
    return b"data: " + envelope(err) + b"\n\n"


def from_http_exception(exc: HTTPException) -> ApiError:
    """Starlette's own refusals (unknown route, 405, the body limit) as ApiErrors."""
    mapping: dict[int, type[ApiError]] = {404: NotFound, 413: PayloadTooLarge, 415: UnsupportedMediaType}
    cls = mapping.get(exc.status_code)
    if cls is None:
        err = ApiError(sanitize(str(exc.detail)))
        err.status_code = exc.status_code
        return err
    return cls("Not found." if exc.status_code == 404 else sanitize(str(exc.detail)))


def install_handlers(app: Starlette, *, validation: type[Exception] | None = None) -> None:
    """Render every error an app raises through :func:`error_response`. ``validation``: the
    framework's request-validation exception (FastAPI's ``RequestValidationError``), passed
    in so that this module stays free of FastAPI; it must have ``errors()``."""

    async def _api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def _validation(_: Request, exc: Exception) -> Response:
        return error_response(validation_error(exc.errors()))  # type: ignore[attr-defined]

    async def _http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(from_http_exception(exc))

    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(InternalError("Internal server error."))

    app.add_exception_handler(ApiError, _api_error)
    if validation is not None:
        app.add_exception_handler(validation, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
