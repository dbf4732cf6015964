"""Models, capacity, health, readiness and metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.api.deps import get_runtime
from server.capacity.schema import Capacity
from server.edge.errors import NotReady
from server.edge.protocol import ModelCard, ModelList
from server.edge.render import error_response
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
                   max_tokens: Annotated[int | None, Query(ge=0, le=10_000_000)] = None) -> Capacity:
    return runtime.capacity(prompt_tokens, max_tokens)


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
