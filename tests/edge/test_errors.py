"""server/edge/errors.py and server/edge/render.py: one hierarchy, one envelope everywhere."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from server.edge.errors import (ApiError, AuthenticationError, NoHealthyNode, NotReady, PayloadTooLarge,
                                UnsupportedMediaType, UpstreamError, UpstreamTimeout, sanitize, validation_error)
from server.edge.protocol import ChatCompletionRequest
from server.edge.render import envelope, error_response, from_http_exception, send_error, sse_error_event

KEYS = {"message", "type", "param", "code"}


@pytest.mark.parametrize("cls, status, type_, code", [
    (ApiError, 400, "invalid_request_error", "invalid_request_error"),
    (AuthenticationError, 401, "authentication_error", "invalid_api_key"),
    (PayloadTooLarge, 413, "invalid_request_error", "request_too_large"),
    (UnsupportedMediaType, 415, "invalid_request_error", "unsupported_media_type"),
    (NotReady, 503, "server_error", "not_ready"),
    (NoHealthyNode, 503, "server_error", "no_healthy_node"),
    (UpstreamError, 502, "server_error", "upstream_error"),
    (UpstreamTimeout, 504, "server_error", "upstream_timeout"),
])
def test_each_error_class_has_its_status_type_and_code(cls, status, type_, code):
    err = cls("why", param="p")
    assert (err.status_code, err.type, err.code) == (status, type_, code)
    assert err.body() == {"error": {"message": "why", "type": type_, "param": "p", "code": code}}


def test_sanitize_strips_addresses_and_control_characters_and_bounds_length():
    assert sanitize("object at 0x7f3a2b1c9d00\x1b[31m") == "object at 0x… [31m"
    assert len(sanitize("x" * 1000)) == 300


def _errors(raw: bytes):
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate_json(raw)
    return exc.value.errors(include_url=False)


def test_validation_errors_name_the_field_or_the_body():
    err = validation_error(_errors(b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}'))
    assert err.status_code == 400 and err.param == "messages[0].role"
    assert err.message.startswith("Invalid value for 'messages[0].role':")
    assert validation_error(_errors(b"{")).message == "Request body is not valid JSON."
    assert validation_error(_errors(b"[]")).message == "Request body must be a JSON object."
    # FastAPI's errors carry a "body" prefix in loc: same param.
    fastapi_style = [{"type": "missing", "loc": ("body", "messages"), "msg": "Field required"}]
    assert validation_error(fastapi_style).param == "messages"


def test_one_envelope_on_every_path():
    err = UpstreamTimeout("slow", headers={"Retry-After": "2"})
    body = json.loads(envelope(err))
    assert set(body) == {"error"} and set(body["error"]) == KEYS
    resp = error_response(err, extra={"state": "draining"})
    assert resp.status_code == 504 and resp.headers["retry-after"] == "2"
    assert json.loads(resp.body) == {**body, "state": "draining"}
    event = sse_error_event(err)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and json.loads(event[6:]) == body


async def test_send_error_on_bare_asgi():
    sent = []

    async def send(message):
        sent.append(message)

    await send_error(send, AuthenticationError("no key", headers={"WWW-Authenticate": "Bearer"}), close=True)
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 401 and headers[b"connection"] == b"close"
    assert headers[b"www-authenticate"] == b"Bearer" and int(headers[b"content-length"]) == len(body["body"])
    assert json.loads(body["body"])["error"]["code"] == "invalid_api_key"


def test_starlette_refusals_become_api_errors():
    assert from_http_exception(HTTPException(404)).message == "Not found."
    too_big = from_http_exception(HTTPException(413, "Request body exceeds 10 bytes."))
    assert isinstance(too_big, PayloadTooLarge) and too_big.code == "request_too_large"
    other = from_http_exception(HTTPException(405, "Method Not Allowed"))
    assert other.status_code == 405 and other.code == "invalid_request_error" and other.message == "Method Not Allowed"
