"""Models, capacity, health, readiness and metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.api.deps import get_runtime
from server.capacity.schema import Capacity
from server.edge.errors import EventsGoneError, NotFound, NotReady
from server.edge.protocol import ModelCard, ModelList
from server.edge.render import error_response
from server.engine.base import PRIORITY_MAX, PRIORITY_MIN
from server.engine.kv_events import EventsGone
from server.runtime import NodeRuntime

router = APIRouter()
Runtime = Annotated[NodeRuntime, Depends(get_runtime)]


@router.get("/v1/models", response_model=ModelList)
async def list_models(runtime: Runtime) -> ModelList:
    if runtime.state == "starting":
        return ModelList(data=[])
    info = runtime.engine.info
    return ModelList(data=[ModelCard(id=info.id, root=info.root, max_model_len=info.max_model_len)])


@router.get("/v1/capacity", response_model=Capacity)
async def capacity(runtime: Runtime,
                   prompt_tokens: Annotated[int | None, Query(ge=0, le=10_000_000)] = None,
                   max_tokens: Annotated[int | None, Query(ge=0, le=10_000_000)] = None,
                   priority: Annotated[int, Query(ge=PRIORITY_MIN, le=PRIORITY_MAX)] = 0) -> Capacity:
    """``priority``: the prediction counts only waiting work of that class or a more urgent one."""
    return runtime.capacity(prompt_tokens, max_tokens, priority)


@router.get("/v1/kv/events")
async def kv_events(runtime: Runtime, since: Annotated[int, Query(ge=0)] = 0,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> JSONResponse:
    """KV-cache events (BlockStored, BlockRemoved, AllBlocksCleared) from sequence ``since``.

    ``next`` is the ``since`` of the following call. A ``since`` older than the ring is a 410:
    the consumer drops what it believes about this node and starts again from ``oldest``."""
    log = getattr(runtime.engine, "kv_events", None)
    if log is None:
        raise NotFound(f"The {runtime.engine.name} engine does not publish KV events on this node.",
                       code="kv_events_unavailable")
    try:
        events, nxt = log.since(since, limit)
    except EventsGone as exc:
        raise EventsGoneError(str(exc), param="since") from None
    return JSONResponse({"events": [e.json() for e in events], "next": nxt})


@router.get("/v1/tokenizer")
async def tokenizer(runtime: Runtime) -> JSONResponse:
    """How this node tokenizes prompts (server/tokenspec.py), for a router in precise prefix
    mode: it computes the KV block hashes of a request as this node will."""
    spec_of = getattr(runtime.engine, "tokenizer_spec", None)
    spec = spec_of() if spec_of is not None and runtime.state != "starting" else None
    if spec is None:
        raise NotFound(f"The {runtime.engine.name} engine does not share its tokenizer on this node.",
                       code="tokenizer_unavailable")
    return JSONResponse({"model": runtime.engine.info.id, **spec.json()})


@router.get("/health")
async def health(runtime: Runtime) -> JSONResponse:
    if not runtime.engine_healthy():
        return JSONResponse({"status": "unhealthy", "reason": "engine is not running"}, status_code=503)
    return JSONResponse({"status": "ok", "state": runtime.state})


@router.get("/ready")
async def ready(runtime: Runtime) -> Response:
    if not runtime.ready:
        err = NotReady(f"Node is {runtime.state}.", headers={"Retry-After": "5"})
        return error_response(err, extra={"state": runtime.state})
    return JSONResponse({"status": "ready", "state": runtime.state})


@router.get("/metrics")
async def metrics(runtime: Runtime) -> Response:
    if runtime.metrics is None:
        return Response(b"", media_type=CONTENT_TYPE_LATEST)
    body = runtime.metrics.render(runtime.capacity(), len(runtime.active))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
