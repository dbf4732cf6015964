"""FastAPI dependencies as Annotated-ready callables."""

from __future__ import annotations

from fastapi import Request

from server.edge.errors import NotReady
from server.edge.media import require_json as _require_json
from server.runtime import NodeRuntime


def get_runtime(request: Request) -> NodeRuntime:
    return request.app.state.runtime


def require_json(request: Request) -> None:
    """The shared Content-Type rule (server.edge.media): JSON or +json, else 415."""
    _require_json(request.headers.get("content-type"))


def get_ready_runtime(request: Request) -> NodeRuntime:
    """The runtime, once the model is loaded; 503 while it loads (D1)."""
    runtime: NodeRuntime = request.app.state.runtime
    if runtime.state == "starting":
        raise NotReady("The model is still loading.", headers={"Retry-After": "5"})
    return runtime
