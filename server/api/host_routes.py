"""The multi-model node's HTTP surface: model lookup for the generation routes, ``/v1/models``
with each model's state, and the admin routes to load, sleep and unload a model.

Installed by ``build_app`` only when the runtime is a :class:`server.host.ModelHost`; a
single-model node never sees any of this.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.edge.errors import (
    ApiError,
    ModelNotFound,
    NotReady,
    PermissionDenied,
    sanitize,
)
from server.host import MODEL_DEFAULT, ModelHost, ModelUnavailable, UnknownModel
from server.host_capacity import model_entry
from server.host_policy import parse_keep_alive

router = APIRouter()


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


def _api_error(exc: ModelUnavailable) -> ApiError:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else {}
    if exc.status == 409:
        return Conflict(sanitize(str(exc)), code=exc.code, headers=headers)
    return NotReady(sanitize(str(exc)), code=exc.code, headers=headers)


def _unknown(model: str) -> ModelNotFound:
    # Names nothing the caller did not send: the list of models is at GET /v1/models.
    return ModelNotFound(f"The model '{model[:100]}' does not exist on this node.", param="model")


@contextlib.asynccontextmanager
async def model_runtime(request: Request, runtime: Any, model: str, priority: int = 0,
                        keep_alive: str | float | None = None) -> AsyncIterator[Any]:
    """The runtime that serves ``model``: the node's own on a single-model node; on a model
    host, the model's, after loading or waking it (the wait is bounded by --load-timeout and
    counts in the queue under ``priority``), held loaded until the block ends: admit the
    request (``Generation``) inside it. ``keep_alive``: the request's own (Ollama's meaning,
    validated by the request schema); a single-model node never unloads, so it ignores it."""
    host: ModelHost | None = getattr(request.app.state, "host", None)
    if host is None:
        yield runtime
        return
    ka = MODEL_DEFAULT if keep_alive is None else parse_keep_alive(keep_alive)
    try:
        rt = await host.acquire(model, priority, ka)
    except UnknownModel:
        raise _unknown(model) from None
    except ModelUnavailable as exc:
        raise _api_error(exc) from None
    host.hold(model)
    try:
        yield rt
    finally:
        host.unhold(model)


def _host(request: Request) -> ModelHost:
    return request.app.state.host


def _card(slot: Any) -> dict[str, Any]:
    e = model_entry(slot)
    return {"id": e.id, "object": "model", "created": 0, "owned_by": "edgefleet", "root": e.id, "parent": None,
            "max_model_len": e.max_model_len, "state": e.state, "state_reason": e.state_reason,
            "pinned": e.pinned, "keep_alive_s": e.keep_alive_s, "memory_bytes": e.memory_bytes,
            "load_s": e.load_s, "wake_s": e.wake_s}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_card(s) for s in _host(request).slots.values()]}


async def _admin(request: Request, model_id: str, action: str) -> JSONResponse:
    if not request.app.state.admin_allowed:
        raise PermissionDenied("Model administration needs the node's API key; this node binds a non-loopback "
                               "address without one (--insecure).", code="admin_disabled")
    host = _host(request)
    try:
        slot = await getattr(host, action)(model_id)
    except UnknownModel:
        raise _unknown(model_id) from None
    except ModelUnavailable as exc:
        raise _api_error(exc) from None
    if action == "load" and slot.state != "loaded":
        raise NotReady(sanitize(f"Model '{model_id}' could not be loaded: {slot.reason}"), code="model_load_failed")
    return JSONResponse(_card(slot))


@router.post("/v1/models/{model_id:path}/load")
async def load(request: Request, model_id: str) -> JSONResponse:
    return await _admin(request, model_id, "load")


@router.post("/v1/models/{model_id:path}/sleep")
async def sleep(request: Request, model_id: str) -> JSONResponse:
    return await _admin(request, model_id, "sleep")


@router.post("/v1/models/{model_id:path}/unload")
async def unload(request: Request, model_id: str) -> JSONResponse:
    return await _admin(request, model_id, "unload")
