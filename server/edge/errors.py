"""One error hierarchy, raised anywhere (node, router, runtime), rendered once by
:mod:`server.edge.render` in the OpenAI envelope.

No web framework here: the runtime below the HTTP layer raises these too. Bodies never
carry stack traces, memory addresses, secrets or upstream text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any


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


class ClientGone(Exception):
    """The client went away (before its body was in, or while its answer was computed):
    nobody is left to answer. Not an ApiError: it is never rendered."""


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


class KeyReused(ApiError):
    """An Idempotency-Key sent again with another body or route: nothing is run."""

    status_code = 422
    code = "idempotency_key_reused"


class ResultTooLarge(ApiError):
    """The first call's result was too large to keep, so a retry cannot be answered from it."""

    status_code = 409
    code = "idempotency_result_too_large"


class EventsGoneError(ApiError):
    """A KV-event cursor older than the node's ring: the consumer resyncs."""

    status_code = 410
    code = "kv_events_gone"


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


# --- the router's own answers ------------------------------------------------------------

class NoHealthyNode(ApiError):
    status_code = 503
    type = "server_error"
    code = "no_healthy_node"


class UpstreamError(ApiError):
    status_code = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamTimeout(ApiError):
    status_code = 504
    type = "server_error"
    code = "upstream_timeout"


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


def validation_error(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """The first of pydantic's (or FastAPI's) validation errors as one 400, naming the field."""
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
