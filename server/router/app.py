"""The router's HTTP app, assembled by :func:`create_app`.

Routes: the OpenAI API (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``),
the fleet view (``/v1/fleet``, ``/v1/fleet/pick``), ``/v1/usage``, ``/health``, ``/ready``,
``/metrics`` and MCP at ``/mcp``. The whole app sits behind the shared security middleware
(default-deny auth with exact-route exemptions, Host/Origin guard, body limit).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import __version__
from server.api.errors import NotFound, install_handlers
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.api.security import SecurityMiddleware
from server.config import is_loopback
from server.router.config import RouterSettings
from server.router.core import Router
from server.router.mcp_tools import build_mcp
from server.router.policy import RequestInfo, estimate
from server.router.proxy import ProxyEndpoint, estimate_prompt_tokens, parse_body
from server.router.session import build_context, pick_info

PROXY_ROUTES = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}


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

    def __init__(self, app: ASGIApp, router: Router):
        self.app = app
        self.routes = {path: ProxyEndpoint(router, schema) for path, schema in PROXY_ROUTES.items()}

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
        return pick_view(self.router, model, pick_info(model, prompt_tokens, max_tokens, **hints))

    async def chat(self, body: dict[str, Any], key_id: str | None = None) -> tuple[int, dict[str, Any], str | None]:
        token = _mcp_caller.set(key_id)
        try:
            resp = await self._client.post("/v1/chat/completions", json=body)
        finally:
            _mcp_caller.reset(token)
        return resp.status_code, resp.json(), resp.headers.get("x-edgefleet-node")


def models_view(router: Router) -> list[dict[str, Any]]:
    now = time.monotonic()
    out = []
    for model_id, nodes in sorted(router.registry.models(now).items()):
        entries = [m for n in nodes for m in n.capacity.models if m.id == model_id]  # type: ignore[union-attr]
        out.append({"id": model_id, "max_model_len": min(m.max_model_len for m in entries),
                    "nodes": [n.name for n in nodes], "ready_nodes": [n.name for n in nodes if n.is_ready(now)]})
    return out


def fleet_view(router: Router) -> dict[str, Any]:
    now = time.monotonic()
    nodes = []
    for n in router.registry.nodes():
        v = n.view(now)
        est = estimate(n, 512, router.policy.mean_max_tokens)  # type: ignore[attr-defined]
        v["score_ms"] = None if est.ttft_ms == float("inf") else round(est.ttft_ms, 2)
        nodes.append(v)
    return {"object": "fleet", "policy": router.policy.name, "poll_interval_s": router.settings.poll_interval,
            "score": "predicted TTFT in ms for a 512-token prompt", "nodes": nodes, "models": models_view(router)}


def pick_view(router: Router, model: str, info: RequestInfo) -> dict[str, Any]:
    ranked = router.candidates(model, info)
    best = ranked[0]
    return {"node": best.node.name, "base_url": best.node.url + "/v1", "predicted_ttft_ms": round(best.ttft_ms, 2),
            "predicted_cached_tokens": router.predicted_cached(best.node, info), "prompt_tokens": info.prompt_tokens,
            "session": info.session, "priority": info.priority, "policy": router.policy.name, "reason": best.reason(),
            "alternatives": [{"node": e.node.name, "predicted_ttft_ms": round(e.ttft_ms, 2),
                              "predicted_cached_tokens": router.predicted_cached(e.node, info)} for e in ranked[1:]]}


def create_app(settings: RouterSettings) -> tuple[ASGIApp, Router]:
    router = Router(settings)
    inner: FastAPI
    mcp_holder: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await router.start()
        async with mcp_holder["mcp"].session_manager.run():
            try:
                yield
            finally:
                await router.stop()

    inner = FastAPI(title="edgefleet router", version=__version__, lifespan=lifespan,
                    docs_url=None, redoc_url=None)
    install_handlers(inner)

    # FastPath serves these; the routes keep the inner app whole (and its 405s) by itself.
    for path, schema in PROXY_ROUTES.items():
        inner.router.routes.append(Route(path, ProxyEndpoint(router, schema), methods=["POST"]))
    fast = FastPath(RouterHeader(inner), router)

    @inner.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [{"id": m["id"], "object": "model", "created": 0, "owned_by": "edgefleet", "root": m["id"],
                 "parent": None, "max_model_len": m["max_model_len"]} for m in models_view(router) if m["ready_nodes"]]
        return {"object": "list", "data": data}

    @inner.get("/v1/fleet")
    async def fleet() -> dict[str, Any]:
        return fleet_view(router)

    @inner.get("/v1/fleet/pick")
    async def pick(model: str, prompt_tokens: int = Query(512, ge=1, le=10_000_000),
                   max_tokens: int = Query(256, ge=1, le=10_000_000), session: str | None = Query(None, max_length=256),
                   priority: int | None = Query(None)) -> dict[str, Any]:
        return pick_view(router, model, pick_info(model, prompt_tokens, max_tokens, session=session, priority=priority))

    @inner.post("/v1/fleet/pick")
    async def pick_for(request: Request) -> dict[str, Any]:
        """The pick for a whole chat request (messages, tools, session header, priority): what
        the proxy would do with it, without sending it."""
        raw = await request.body()
        req = parse_body(raw, ChatCompletionRequest)
        prompt_tokens = estimate_prompt_tokens(req)
        key_id = request.scope.get("state", {}).get("key_id", "anonymous")
        ctx = build_context(req, raw, dict(request.scope["headers"]), router.settings.limits.get(key_id),
                            prompt_tokens, req.requested_max_tokens() or router.settings.default_max_tokens)
        return pick_view(router, req.model, ctx.info)

    @inner.get("/v1/usage")
    async def usage(request: Request) -> dict[str, Any]:
        key_id = request.scope.get("state", {}).get("key_id")
        table = router.limiter.usage
        if key_id is not None:  # a client key sees its own usage only
            table = {key_id: table[key_id]} if key_id in table else {}
        return {"object": "usage", "keys": {k: u.view() for k, u in sorted(table.items())}}

    @inner.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @inner.get("/ready")
    async def ready() -> JSONResponse:
        now = time.monotonic()
        n = sum(1 for node in router.registry.nodes() if node.is_ready(now))
        return JSONResponse({"status": "ready" if n else "no_healthy_node", "ready_nodes": n},
                            status_code=200 if n else 503)

    @inner.get("/metrics")
    async def metrics() -> Response:
        body = router.metrics.render(router.registry.nodes(), time.monotonic())
        return Response(body, media_type="text/plain; version=0.0.4")

    @inner.get("/v1/fleet/nodes/{name}")
    async def node(name: str) -> dict[str, Any]:
        n = router.registry.find(name)
        if n is None:
            raise NotFound(f"Node '{name[:64]}' is not in this fleet.", code="node_not_found")
        return n.view(time.monotonic())

    mcp = build_mcp(LocalBackend(router, fast))
    mcp_holder["mcp"] = mcp
    # Host/Origin and auth are checked by SecurityMiddleware for /mcp like any other route.
    mcp_app = mcp.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    inner.router.routes.extend(mcp_app.routes)

    app = SecurityMiddleware(
        fast, keys=settings.keys, loopback_bind=is_loopback(settings.host),
        allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins,
        max_body_bytes=settings.max_body_bytes, body_first=PROXY_ROUTES)
    return app, router

