"""The one in-process HTTP client the unit tests use (fixtures built on it: tests/conftest.py)."""

from __future__ import annotations

import httpx


def asgi_client(app, host: str = "127.0.0.1") -> httpx.AsyncClient:
    """An httpx client calling ``app`` in-process (no socket, no lifespan)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")
