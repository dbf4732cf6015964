"""FastAPI dependencies as Annotated-ready callables."""

from __future__ import annotations

from fastapi import Request

from server.api.errors import UnsupportedMediaType
from server.runtime import NodeRuntime


def get_runtime(request: Request) -> NodeRuntime:
    return request.app.state.runtime


def require_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        raise UnsupportedMediaType("Content-Type must be application/json.")


def get_ready_runtime(request: Request) -> NodeRuntime:
    """The runtime, once the model is loaded; 503 while it loads (D1)."""
    from server.api.errors import NotReady

    runtime: NodeRuntime = request.app.state.runtime
    if runtime.state == "starting":
        raise NotReady("The model is still loading.", headers={"Retry-After": "5"})
    return runtime
