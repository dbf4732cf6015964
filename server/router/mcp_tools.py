"""The router as an MCP server: tools for agents to see the fleet and run calls through it.

One set of tools over a :class:`FleetBackend`: in the router process (``/mcp``, streamable
HTTP, behind the same auth and Origin checks as the API) it reads the router's state;
for ``edgefleet mcp --router URL`` (stdio) it calls the router's HTTP API.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from server import __version__
from server.edge.errors import ApiError

INSTRUCTIONS = (
    "edgefleet routes OpenAI-compatible requests across a fleet of inference nodes. "
    "Use list_models and list_nodes to see what the fleet serves, pick_node to learn which node "
    "would answer first for a request size, and complete to run a chat completion through the fleet."
)


class FleetBackend(Protocol):
    async def models(self) -> list[dict[str, Any]]: ...
    async def nodes(self) -> list[dict[str, Any]]: ...
    async def pick(self, model: str, prompt_tokens: int, max_tokens: int, **hints: Any) -> dict[str, Any]:
        """``hints``: messages, session, priority (server/router/session.py pick_info)."""
        ...
    async def warm(self, model: str) -> dict[str, Any]: ...
    async def chat(self, body: dict[str, Any], key_id: str | None = None) -> tuple[int, dict[str, Any], str | None]:
        """``key_id``: the client key that called the tool, when the transport authenticated one."""
        ...


def summarize_node(v: dict[str, Any]) -> dict[str, Any]:
    cap = v.get("capacity") or {}
    load = cap.get("load") or {}
    return {
        "name": v["name"], "url": v["url"], "zone": v.get("zone"), "health": v["health"], "ready": v["ready"],
        "rtt_ms": v.get("rtt_ms"), "simulated": v.get("simulated", False),
        "models": [m["id"] for m in cap.get("models", [])], "state": cap.get("state"),
        "model_states": {m["id"]: m.get("state", "loaded") for m in cap.get("models", [])},
        "running": load.get("running"), "waiting": load.get("waiting"),
        "predicted_ttft_ms": v.get("score_ms"),
    }


def build_mcp(backend: FleetBackend) -> MCPServer:
    mcp = MCPServer("edgefleet-router", instructions=INSTRUCTIONS, version=__version__)

    @mcp.tool()
    async def list_models() -> list[dict[str, Any]]:
        """Models served by the fleet, with the nodes that serve each."""
        return await backend.models()

    @mcp.tool()
    async def list_nodes(ctx: Context | None = None) -> list[dict[str, Any]]:
        """Every node with its health, round-trip time, load and predicted time to first token.
        Node URLs are shown to admin keys only."""
        nodes = [summarize_node(v) for v in await backend.nodes()]
        if not _caller_admin(ctx):
            nodes = [{**n, "url": None} for n in nodes]
        return nodes

    @mcp.tool()
    async def get_node_capacity(node: str, ctx: Context | None = None) -> dict[str, Any]:
        """The last capacity document of one node (by name, node id or URL). Admin keys only."""
        if not _caller_admin(ctx):
            raise ToolError("admin_required: a node's capacity document is shown to admin keys only")
        for v in await backend.nodes():
            if node in (v["name"], v.get("node_id"), v["url"]):
                if v.get("capacity") is None:
                    raise ToolError(f"node_not_polled: node {node!r} has not answered a capacity poll yet")
                return v["capacity"]
        raise ToolError(f"node_not_found: node {node!r} is not in this fleet")

    @mcp.tool()
    async def pick_node(model: str, prompt_tokens: int = 512, max_tokens: int = 256,
                        messages: list[dict[str, Any]] | None = None, session: str | None = None,
                        priority: int | None = None, ctx: Context | None = None) -> dict[str, Any]:
        """The node that would answer first: its base URL, predicted TTFT in ms, predicted
        cached prompt tokens, and why. Give ``messages`` (and the agent's ``session`` key) to
        see where the conversation's context is; ``priority``: lower runs first."""
        hints = {k: v for k, v in (("messages", messages), ("session", session), ("priority", priority))
                 if v is not None}
        try:
            view = await backend.pick(model, prompt_tokens, max_tokens, **hints)
        except ApiError as err:
            raise ToolError(f"{err.code}: {err.message}") from None
        return view if _caller_admin(ctx) else {**view, "base_url": None}

    @mcp.tool()
    async def warm_model(model: str) -> dict[str, Any]:
        """Ask the node that would serve this model to load it now, so a later call does not wait for
        the load. Returns the node and whether a load was started."""
        try:
            return await backend.warm(model)
        except ApiError as err:
            raise ToolError(f"{err.code}: {err.message}") from None

    @mcp.tool()
    async def complete(model: str, messages: list[dict[str, Any]], max_tokens: int = 256,
                       ctx: Context | None = None) -> dict[str, Any]:
        """Run a chat completion through the fleet; returns the text, the node that served it and usage."""
        status, body, node = await backend.chat({"model": model, "messages": messages, "max_tokens": max_tokens},
                                                key_id=_caller_key(ctx))
        if status != 200:
            err = (body.get("error") or {}) if isinstance(body, dict) else {}
            raise ToolError(f"{err.get('code')}: {err.get('message')} (HTTP {status})")
        choice = (body.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        return {"node": node, "content": msg.get("content"), "tool_calls": msg.get("tool_calls"),
                "finish_reason": choice.get("finish_reason"), "usage": body.get("usage")}

    return mcp


def _caller_state(ctx: Context | None) -> dict[str, Any]:
    if ctx is None:
        return {}
    try:
        request = ctx.request_context.request
    except ValueError:
        return {}
    scope = getattr(request, "scope", None) or {}
    return scope.get("state") or {}


def _caller_key(ctx: Context | None) -> str | None:
    """The key id the router's auth middleware attached to this MCP HTTP request (None on
    stdio, where the HTTP backend authenticates with its own key)."""
    return _caller_state(ctx).get("key_id")


def _caller_admin(ctx: Context | None) -> bool:
    """An admin key, or no key at all (a keyless loopback router; or stdio, where the router
    itself answers by the HTTP backend's key)."""
    state = _caller_state(ctx)
    return "key_id" not in state or bool(state.get("admin"))


class HttpBackend:
    """Talks to a running router (``edgefleet mcp --router URL``)."""

    def __init__(self, router_url: str, api_key: str | None = None, timeout: float = 300.0):
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=router_url.rstrip("/"), headers=headers, timeout=timeout,
                                        trust_env=False)

    async def _get(self, path: str, **params: Any) -> Any:
        resp = await self.client.get(path, params=params or None)
        if resp.status_code != 200:
            err = resp.json().get("error", {}) if resp.headers.get("content-type", "").startswith("application/json") else {}
            raise ToolError(f"{err.get('code')}: {err.get('message', '')} (router answered HTTP {resp.status_code})")
        return resp.json()

    async def models(self) -> list[dict[str, Any]]:
        resp = await self.client.get("/v1/fleet")
        if resp.status_code == 403:  # a client key: the public model list, without node names
            return [{"id": m["id"], "max_model_len": m.get("max_model_len")}
                    for m in (await self._get("/v1/models"))["data"]]
        return (await self._get("/v1/fleet"))["models"]

    async def nodes(self) -> list[dict[str, Any]]:
        return (await self._get("/v1/fleet"))["nodes"]

    async def pick(self, model: str, prompt_tokens: int, max_tokens: int, **hints: Any) -> dict[str, Any]:
        messages = hints.pop("messages", None)
        if messages is not None:
            body = {"model": model, "messages": messages, "max_tokens": max_tokens}
            if hints.get("priority") is not None:
                body["priority"] = hints["priority"]
            headers = {"x-edgefleet-session": hints["session"]} if hints.get("session") else {}
            resp = await self.client.post("/v1/fleet/pick", json=body, headers=headers)
            if resp.status_code != 200:
                err = resp.json().get("error", {}) if resp.headers.get("content-type", "").startswith(
                    "application/json") else {}
                raise ToolError(f"{err.get('code')}: {err.get('message', '')} (router answered HTTP {resp.status_code})")
            return resp.json()
        return await self._get("/v1/fleet/pick", model=model, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                               **{k: v for k, v in hints.items() if v is not None})

    async def warm(self, model: str) -> dict[str, Any]:
        resp = await self.client.post("/v1/fleet/warm", json={"model": model})
        if resp.status_code not in (200, 202):
            err = resp.json().get("error", {}) if resp.headers.get("content-type", "").startswith("application/json") else {}
            raise ToolError(f"{err.get('code')}: {err.get('message', '')} (router answered HTTP {resp.status_code})")
        return resp.json()

    async def chat(self, body: dict[str, Any], key_id: str | None = None) -> tuple[int, dict[str, Any], str | None]:
        # The router authenticates this client by its own key; key_id is not ours to claim.
        resp = await self.client.post("/v1/chat/completions", json=body)
        return resp.status_code, resp.json(), resp.headers.get("x-edgefleet-node")
