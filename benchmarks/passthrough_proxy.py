"""The floor for a proxy hop in edgefleet's stack: uvicorn in, the router's upstream pool
(``server.router.upstream``) out, nothing else.

    python -m benchmarks.passthrough_proxy UPSTREAM_URL PORT

No validation, routing, limits, audit or disconnect handling: the body goes to one fixed
upstream and the answer comes back chunk by chunk. ``router_overhead`` runs it beside the
router so the router's own logic can be told apart from the cost of any Python hop on the
same machine. A measuring instrument, not a product.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.types import Receive, Scope, Send

from server.router.upstream import UpstreamPool


class Passthrough:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.pool: UpstreamPool | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["path"] == "/ready":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert self.pool is not None
        resp = await self.pool.request(self.upstream, scope["path"], body, {"content-type": "application/json"},
                                       connect_timeout=5.0, head_timeout=60.0)
        try:
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": [(b"content-type", resp.headers.get("content-type", "").encode())]})
            while chunk := await resp.next_chunk():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            resp.release()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.pool = UpstreamPool(read_timeout=60.0)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pool is not None:
                    await self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    upstream, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(Passthrough(upstream), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                proxy_headers=False)


if __name__ == "__main__":
    main()
