"""One error hierarchy, raised anywhere, rendered once in the OpenAI envelope.

Bodies never carry stack traces, memory addresses, secrets or upstream text.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ApiError):
    pass


class ContextLengthExceeded(ApiError):
    code = "context_length_exceeded"


class AuthenticationError(ApiError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ApiError):
    status_code = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "request_too_large"


class HeadersTooLarge(ApiError):
    status_code = 431
    code = "request_header_fields_too_large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "unsupported_media_type"


class RateLimited(ApiError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Overloaded(ApiError):
    status_code = 503
    type = "server_error"
    code = "server_overloaded"


class NotReady(ApiError):
    status_code = 503
    type = "server_error"
    code = "not_ready"


class InternalError(ApiError):
    status_code = 500
    type = "server_error"
    code = "internal_error"


class EngineUnavailable(ApiError):
    status_code = 503
    type = "server_error"
    code = "engine_unavailable"


_ADDR = re.compile(r"0x[0-9a-fA-F]{6,}")


def sanitize(text: str, limit: int = 300) -> str:
    """Strip memory addresses and control characters; bound the length."""
    text = _ADDR.sub("0x…", text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:limit]


def _field_path(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body",)]
    # Drop pydantic's union-member tags like "str" / "list[...]" / "function-after[...]".
    parts = [p for p in parts if not ("[" in p or p in ("str", "int", "float", "bool", "list", "dict", "json_schema", "json_object", "text"))]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers)


def validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    if not errors:
        return InvalidRequest("Invalid request body.")
    first = errors[0]
    param = _field_path(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "json_invalid":
        if "recursion limit" in str(first.get("msg", "")):  # pydantic's own JSON parser
            return InvalidRequest("Request body is nested too deeply.")
        return InvalidRequest("Request body is not valid JSON.")
    if kind in ("model_attributes_type", "dict_type", "model_type") and param is None:
        return InvalidRequest("Request body must be a JSON object.")
    msg = sanitize(str(first.get("msg", "invalid value")))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    where = f" for '{param}'" if param else ""
    return InvalidRequest(f"Invalid value{where}: {msg}", param=param)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        mapping: dict[int, type[ApiError]] = {404: NotFound, 413: PayloadTooLarge, 415: UnsupportedMediaType}
        cls = mapping.get(exc.status_code)
        if cls is None:
            err = ApiError(sanitize(str(exc.detail)), code=None)
            err.status_code = exc.status_code
        else:
            err = cls("Not found." if exc.status_code == 404 else sanitize(str(exc.detail)))
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        import logging
        logging.getLogger("edgefleet.api").exception("unhandled error")
        return error_response(InternalError("Internal server error."))
