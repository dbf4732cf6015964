"""Pre-warming: ``POST /v1/fleet/warm {"model": ...}`` and the MCP tool ``warm_model``.

The router picks the node a request for the model would go to now (the same ranking, so the
same warm-beats-cold rule) and, if the model is not loaded there, asks that node to load it
(``POST /v1/models/{id}/load`` with the router's key for the node). By default it answers at
once (202) and the load goes on; ``"wait": true`` waits for the node's answer. The route is
in ``routes.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from server.edge.errors import UpstreamError
from server.router.core import Router
from server.router.policy import REF_MAX_TOKENS, REF_PROMPT_TOKENS, RequestInfo
from server.router.registry import Node
from server.router.warmth import is_warm, model_entry

log = logging.getLogger("edgefleet.router")
_tasks: set[asyncio.Task] = set()


class WarmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1, max_length=256)
    wait: bool = False


async def _load_on(router: Router, node: Node, model: str) -> tuple[int, dict[str, Any]]:
    url = f"{node.url}/v1/models/{quote(model, safe='/')}/load"
    async with httpx.AsyncClient(timeout=router.settings.read_timeout, trust_env=False) as client:
        r = await client.post(url, headers=node.auth_headers)
    try:
        body = r.json()
    except ValueError:
        body = {}
    return r.status_code, body


async def warm_model(router: Router, model: str, wait: bool = False) -> tuple[int, dict[str, Any]]:
    ranked = router.candidates(model, RequestInfo(REF_PROMPT_TOKENS, REF_MAX_TOKENS, now=time.monotonic(), model=model))
    node = ranked[0].node
    entry = model_entry(node, model)
    view = {"object": "fleet.warm", "model": model, "node": node.name,
            "predicted_ttft_ms": round(ranked[0].ttft_ms, 2)}
    if is_warm(node, model):
        return 200, {**view, "state": "loaded", "action": "none"}
    if not wait:
        task = asyncio.create_task(_load_on(router, node, model))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
        return 202, {**view, "state": "loading", "action": "load",
                     "was": entry.state if entry is not None else None}
    try:
        status, body = await _load_on(router, node, model)
    except httpx.HTTPError as exc:
        raise UpstreamError(f"Node '{node.name}' could not be asked to load the model: {type(exc).__name__}.") \
            from None
    if status != 200:
        err = body.get("error") if isinstance(body, dict) else None
        message = err.get("message") if isinstance(err, dict) else f"HTTP {status}"
        raise UpstreamError(f"Node '{node.name}' did not load '{model[:128]}': {str(message)[:300]}")
    return 200, {**view, "state": body.get("state", "loaded"), "action": "load", "load_s": body.get("load_s")}
