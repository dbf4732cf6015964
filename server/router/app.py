"""The router's HTTP app, assembled by :func:`create_app` from ``routes.py`` (its routes),
``proxy.py`` (the proxy endpoints, served by :class:`FastPath`) and MCP.

Routes: the OpenAI API (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``),
the fleet view (``/v1/fleet``, ``/v1/fleet/pick``, ``/v1/fleet/warm``), ``/v1/usage``, ``/health``, ``/ready``,
``/metrics`` and MCP at ``/mcp``. The whole app sits behind the shared security middleware
(default-deny auth with exact-route exemptions, Host/Origin guard, body limit).
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import __version__
from server.config import is_loopback
from server.edge.protocol import ChatCompletionRequest
from server.edge.render import install_handlers
from server.edge.security import SecurityMiddleware
from server.router.config import RouterSettings
from server.router.core import Router
from server.router.mcp_tools import build_mcp
from server.router.persist import Persistence
from server.router.routes import (PROXY_ROUTES, fleet_view, models_view, pick_view, proxy_docs, proxy_routes,
                                  routes)
from server.router.proxy import parse_body
from server.router.session import pick_info
from server.router.warm import warm_model


class RouterHeader:
    """Every response carries ``X-Edgefleet-Node`` (``router`` when the router answered itself)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if not any(k == b"x-edgefleet-node" for k, _ in headers):
                    message["headers"] = [*headers, (b"x-edgefleet-node", b"router")]
            await send(message)

        await self.app(scope, receive, send_with_header)


class FastPath:
    """The two proxy routes, served without FastAPI's routing and middleware layers: on the
    hot path every layer costs per request and again per relayed chunk. The proxy renders
    its own errors, as the app's exception handlers would."""

    def __init__(self, app: ASGIApp, proxies: list[Route]):
        self.app = app
        self.routes = {route.path: route.app for route in proxies}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        await endpoint(scope, receive, send)


_mcp_caller: ContextVar[str | None] = ContextVar("edgefleet_mcp_caller", default=None)


class _AsCaller:
    """Gives an in-process request the key id of the MCP client it runs for, so ``complete``
    is limited, counted and audited as that key's call (the auth middleware is not on this
    in-process path; it already checked the MCP request itself)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key_id = _mcp_caller.get()
        if key_id is not None:
            scope = {**scope, "state": {**scope.get("state", {}), "key_id": key_id}}
        await self.app(scope, receive, send)


class LocalBackend:
    """MCP tools read the router's own state; ``complete`` goes through the proxy in-process."""

    def __init__(self, router: Router, app: ASGIApp):
        self.router = router
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=_AsCaller(app)), base_url="http://router",
                                         timeout=router.settings.read_timeout)

    async def models(self) -> list[dict[str, Any]]:
        return models_view(self.router)

    async def nodes(self) -> list[dict[str, Any]]:
        return fleet_view(self.router)["nodes"]

    async def pick(self, model: str, prompt_tokens: int, max_tokens: int, **hints: Any) -> dict[str, Any]:
        info = pick_info(model, prompt_tokens, max_tokens, **hints)
        if hints.get("messages"):  # as the proxy does: exact where a node offers KV events
            req = parse_body(json.dumps({"model": model, "messages": hints["messages"]}).encode(),
                             ChatCompletionRequest)
            await self.router.predict_precise(req, info)
        return pick_view(self.router, model, info)

    async def warm(self, model: str) -> dict[str, Any]:
        return (await warm_model(self.router, model))[1]

    async def chat(self, body: dict[str, Any], key_id: str | None = None) -> tuple[int, dict[str, Any], str | None]:
        token = _mcp_caller.set(key_id)
        try:
            resp = await self._client.post("/v1/chat/completions", json=body)
        finally:
            _mcp_caller.reset(token)
        return resp.status_code, resp.json(), resp.headers.get("x-edgefleet-node")


def create_app(settings: RouterSettings) -> tuple[ASGIApp, Router]:
    router = Router(settings)
    persist = Persistence(router)  # the store: idempotency results, limit windows and usage

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await persist.start()
        await router.start()
        async with app.state.mcp.session_manager.run():
            try:
                yield
            finally:
                await router.stop()
                await persist.stop()

    inner = FastAPI(title="edgefleet router", version=__version__, lifespan=lifespan,
                    docs_url=None, redoc_url=None)
    inner.state.router = router
    install_handlers(inner, validation=RequestValidationError)
    inner.include_router(routes)
    proxies = proxy_routes(router)
    inner.router.routes.extend(proxies)  # FastPath serves them; here they keep the app's 405s whole
    fast = FastPath(RouterHeader(inner), proxies)

    def openapi() -> dict[str, Any]:  # the proxy endpoints too, with the node's request bodies
        if inner.openapi_schema is None:
            inner.openapi_schema = get_openapi(title=inner.title, version=inner.version,
                                               routes=[*proxy_docs(), *inner.routes])
        return inner.openapi_schema

    inner.openapi = openapi

    inner.state.mcp = mcp = build_mcp(LocalBackend(router, fast))
    # Host/Origin and auth are checked by SecurityMiddleware for /mcp like any other route.
    mcp_app = mcp.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    inner.router.routes.extend(mcp_app.routes)

    def audit_rejected(scope: Scope, err: Any) -> None:
        """A request the edge refused (401, 403, 413, 431) gets its audit line too."""
        router.metrics.requests.labels("-", str(err.status_code)).inc()  # counted; no latency to observe
        if router.audit.enabled:
            client = scope.get("client")
            router.audit.write({"request_id": None, "key_id": (scope.get("state") or {}).get("key_id"),
                                "client": client[0] if client else None, "method": scope.get("method"),
                                "path": scope.get("path"), "status": err.status_code, "outcome": err.code,
                                "error": err.code})

    app = SecurityMiddleware(
        fast, keys=settings.keys, loopback_bind=is_loopback(settings.host),
        allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins,
        max_body_bytes=settings.max_body_bytes, body_first=PROXY_ROUTES, on_reject=audit_rejected)
    return app, router
