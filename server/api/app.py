"""Build the node's ASGI app: routes, error rendering, security, and the engine lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from server import __version__
from server.api import chat, completions, node_routes, tokenize
from server.config import is_loopback
from server.edge.idempotency import Idempotency, IdempotencyMiddleware
from server.edge.render import install_handlers
from server.edge.security import KeyStore, SecurityMiddleware
from server.runtime import NodeRuntime
from server.store import MemoryStore

log = logging.getLogger("edgefleet.node")


def build_app(runtime: NodeRuntime, *, api_key: str | None = None,
              on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """``on_fatal`` is called when the engine fails to start or dies, so the process can exit
    non-zero for its supervisor (D3)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def start_then_watch() -> None:
            try:
                await runtime.start_engine()
            except Exception as exc:
                if on_fatal:
                    on_fatal(f"engine failed to start: {exc}")
                return
            while True:
                await asyncio.sleep(0.5)
                if not runtime.engine.is_healthy():
                    log.error("the engine died; exiting so the supervisor can restart the node")
                    if on_fatal:
                        on_fatal("engine died")
                    return

        task = asyncio.create_task(start_then_watch())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            with contextlib.suppress(Exception):
                await runtime.engine.stop()

    app = FastAPI(title="edgefleet node", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible inference node with a capacity report.")
    app.state.runtime = runtime
    install_handlers(app, validation=RequestValidationError)
    _install_host(app, runtime, api_key)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(node_routes.router)
    app.include_router(tokenize.router)
    s = runtime.settings
    # Idempotency-Key on the two generation routes (in memory on the node; server/edge/idempotency.py).
    app.add_middleware(IdempotencyMiddleware, idempotency=Idempotency(MemoryStore()),
                       paths={"/v1/chat/completions", "/v1/completions"})
    app.add_middleware(SecurityMiddleware, keys=KeyStore.single(api_key), loopback_bind=is_loopback(s.host),
                       allowed_hosts=s.allowed_hosts, allowed_origins=s.allowed_origins,
                       max_body_bytes=s.max_body_bytes)
    return app


def _install_host(app: FastAPI, runtime: object, api_key: str | None) -> None:
    """A multi-model node (server/host.py): its /v1/models (listed before the single-model
    route, so it wins) and admin routes."""
    from server.host import ModelHost

    app.state.host = runtime if isinstance(runtime, ModelHost) else None
    if app.state.host is None:
        return
    from server.api import host_routes

    app.state.admin_allowed = api_key is not None or is_loopback(runtime.settings.host)
    app.include_router(host_routes.router)
