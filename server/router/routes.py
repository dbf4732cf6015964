"""The router's own routes (the fleet view, usage, health, metrics) and the two proxy routes,
as the node keeps its side routes in ``server/api/node_routes.py``.

Handlers reach the :class:`Router` through the ``Fleet`` dependency (``app.state.router``).
The views (``models_view``, ``fleet_view``, ``pick_view``; ``warm_model`` in ``warm.py``)
are plain functions: the MCP tools read the same data through them.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.routing import APIRoute
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route

from server.edge.errors import NotFound, PermissionDenied
from server.edge.protocol import ChatCompletionRequest, CompletionRequest
from server.router.core import Router
from server.edge.media import require_json
from server.router.policy import RequestInfo, estimate
from server.router.proxy import ProxyEndpoint, estimate_prompt_tokens, parse_body
from server.router.session import build_context, pick_info
from server.router.warm import WarmRequest, warm_model
from server.router.warmth import model_states

PROXY_ROUTES = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}


def proxy_routes(router: Router) -> list[Route]:
    """The proxy endpoints, built once: the app mounts these routes (its 405s stay whole) and
    :class:`server.router.app.FastPath` calls the same endpoints without the app's layers."""
    return [Route(path, ProxyEndpoint(router, schema), methods=["POST"]) for path, schema in PROXY_ROUTES.items()]


def proxy_docs() -> list[APIRoute]:
    """The proxy endpoints as the router's /openapi.json documents them (their request bodies
    are the node's): these routes are never mounted, FastPath serves the paths."""
    docs = []
    for path, schema in PROXY_ROUTES.items():
        async def endpoint(body): ...  # pragma: no cover - documentation only

        endpoint.__signature__ = inspect.Signature(
            [inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=schema)])
        name = "create_" + path.removeprefix("/v1/").replace("/", "_")
        docs.append(APIRoute(path, endpoint, methods=["POST"], name=name, summary=name.replace("_", " ").title()))
    return docs


def get_router(request: Request) -> Router:
    return request.app.state.router


def is_admin(router: Router, scope: dict[str, Any]) -> bool:
    """Scopes (docs/router.md, "Keys and scopes"): with client keys configured, only an admin
    key sees fleet internals (node URLs, capacity documents, /metrics, every key's usage).
    A router without keys (loopback only) is the single-user case: it shows everything."""
    if not router.settings.keys.enabled:
        return True
    return bool((scope.get("state") or {}).get("admin"))


def require_admin(request: Request) -> Router:
    router = get_router(request)
    if not is_admin(router, request.scope):
        raise PermissionDenied("This route shows fleet internals; it needs an admin key.", code="admin_required")
    return router


def redact_pick(view: dict[str, Any]) -> dict[str, Any]:
    """A pick for a client key: which node and why, but not where it is."""
    return {**view, "base_url": None}


Fleet = Annotated[Router, Depends(get_router)]
AdminFleet = Annotated[Router, Depends(require_admin)]
routes = APIRouter()


# --- views shared with the MCP tools ------------------------------------------------------

def models_view(router: Router) -> list[dict[str, Any]]:
    now = time.monotonic()
    out = []
    for model_id, nodes in sorted(router.registry.models(now).items()):
        entries = [m for n in nodes for m in n.capacity.models if m.id == model_id]  # type: ignore[union-attr]
        out.append({"id": model_id, "max_model_len": min((m.max_model_len for m in entries if m.max_model_len),
                                                          default=0),
                    "nodes": [n.name for n in nodes], "ready_nodes": [n.name for n in nodes if n.is_ready(now)],
                    "states": {n.name: model_states(n).get(model_id, "loaded") for n in nodes}})
    return out


def fleet_view(router: Router) -> dict[str, Any]:
    now = time.monotonic()
    nodes = []
    for n in router.registry.nodes():
        v = n.view(now)
        est = estimate(n, 512, router.policy.mean_max_tokens)  # type: ignore[attr-defined]
        v["score_ms"] = None if est.ttft_ms == float("inf") else round(est.ttft_ms, 2)
        v["prefix_mode"] = router.kv.mode(n)  # precise: from the node's KV events; estimate: prefix_index
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


# --- routes -------------------------------------------------------------------------------

@routes.get("/v1/models")
async def list_models(router: Fleet) -> dict[str, Any]:
    data = [{"id": m["id"], "object": "model", "created": 0, "owned_by": "edgefleet", "root": m["id"],
             "parent": None, "max_model_len": m["max_model_len"], "states": m["states"]}
            for m in models_view(router) if m["ready_nodes"]]
    return {"object": "list", "data": data}


@routes.get("/v1/fleet")
async def fleet(router: AdminFleet) -> dict[str, Any]:
    return fleet_view(router)


@routes.get("/v1/fleet/pick")
async def pick(router: Fleet, request: Request, model: str,
               prompt_tokens: Annotated[int, Query(ge=1, le=10_000_000)] = 512,
               max_tokens: Annotated[int, Query(ge=1, le=10_000_000)] = 256,
               session: Annotated[str | None, Query(max_length=256)] = None,
               priority: int | None = None) -> dict[str, Any]:
    view = pick_view(router, model, pick_info(model, prompt_tokens, max_tokens, session=session, priority=priority))
    return view if is_admin(router, request.scope) else redact_pick(view)


@routes.post("/v1/fleet/pick", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}})
async def pick_for(router: Fleet, request: Request) -> dict[str, Any]:
    """The pick for a whole chat request (messages, tools, session header, priority): what
    the proxy would do with it, without sending it."""
    require_json(request.headers.get("content-type"))
    raw = await request.body()
    req = parse_body(raw, ChatCompletionRequest)
    key_id = request.scope.get("state", {}).get("key_id", "anonymous")
    ctx = build_context(req, raw, dict(request.scope["headers"]), router.settings.limits.get(key_id),
                        estimate_prompt_tokens(req), req.requested_max_tokens() or router.settings.default_max_tokens)
    await router.predict_precise(req, ctx.info)  # as the proxy does: exact where a node offers KV events
    view = pick_view(router, req.model, ctx.info)
    return view if is_admin(router, request.scope) else redact_pick(view)


@routes.post("/v1/fleet/warm")
async def warm(router: Fleet, req: WarmRequest) -> JSONResponse:
    """Load ``model`` where a request for it would go now (server/router/warm.py)."""
    status, body = await warm_model(router, req.model, req.wait)
    return JSONResponse(body, status_code=status)


@routes.get("/v1/fleet/nodes/{name}")
async def node(router: AdminFleet, name: str) -> dict[str, Any]:
    n = router.registry.find(name)
    if n is None:
        raise NotFound(f"Node '{name[:64]}' is not in this fleet.", code="node_not_found")
    return n.view(time.monotonic())


@routes.get("/v1/usage")
async def usage(router: Fleet, request: Request) -> dict[str, Any]:
    key_id = request.scope.get("state", {}).get("key_id")
    table = router.limiter.usage
    if key_id is not None and not is_admin(router, request.scope):  # a client key sees its own usage only
        table = {key_id: table[key_id]} if key_id in table else {}
    return {"object": "usage", "keys": {k: u.view() for k, u in sorted(table.items())}}


@routes.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@routes.get("/ready")
async def ready(router: Fleet) -> JSONResponse:
    if router.draining:
        return JSONResponse({"status": "shutting_down", "ready_nodes": 0}, status_code=503)
    now = time.monotonic()
    n = sum(1 for node in router.registry.nodes() if node.is_ready(now))
    return JSONResponse({"status": "ready" if n else "no_healthy_node", "ready_nodes": n},
                        status_code=200 if n else 503)


@routes.get("/metrics")
async def metrics(router: AdminFleet) -> Response:
    router.metrics.tasks.set(len(asyncio.all_tasks()))
    router.metrics.open_exchanges.set(len(router.streams))
    body = router.metrics.render(router.registry.nodes(), time.monotonic())
    return Response(body, media_type="text/plain; version=0.0.4")
