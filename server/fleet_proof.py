"""A node proves it holds the fleet's node key without sending it (RELIABILITY G1).

A router that finds a node over mDNS sends ``GET /health`` with a fresh random nonce in
``X-Edgefleet-Challenge`` and no key. A node started with ``--api-key`` answers with
``X-Edgefleet-Proof`` = HMAC-SHA256(key, "edgefleet-node-proof/1" | nonce | node_id |
the address and port the connection reached) and its id in ``X-Edgefleet-Node-Id``.

The router admits the node only if the proof matches the key it would present and the
address it dialled. Binding the address defeats a relay: a rogue host that forwards the
challenge to a real node gets a proof for the real node's address, not its own. The node
only ever MACs a nonce with its own identity, so answering challenges reveals nothing that
helps forge a proof for another address.

Plain ASGI and the standard library: the router imports :func:`proof` from here too.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Any

CHALLENGE_HEADER = "x-edgefleet-challenge"
PROOF_HEADER = "x-edgefleet-proof"
NODE_ID_HEADER = "x-edgefleet-node-id"
CHALLENGE_PATH = "/health"
MAX_NONCE = 128


def canonical_address(host: str, port: int) -> str:
    host = host.strip("[]")
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        host = host.lower()
    return f"{host}|{port}"


def proof(key: str, nonce: str, node_id: str, host: str, port: int) -> str:
    msg = "\n".join(("edgefleet-node-proof/1", nonce, node_id, canonical_address(host, port)))
    return hmac.new(key.encode(), msg.encode(), hashlib.sha256).hexdigest()


class NodeProof:
    """ASGI middleware on the node: answers a challenge on ``/health`` with a proof header.
    Every other request passes untouched (one path comparison)."""

    def __init__(self, app: Any, key: str, node_id: str):
        self.app = app
        self.key = key
        self.node_id = node_id

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != CHALLENGE_PATH:
            await self.app(scope, receive, send)
            return
        nonce = next((v for k, v in scope["headers"] if k == CHALLENGE_HEADER.encode()), None)
        server = scope.get("server")
        if nonce is None or len(nonce) > MAX_NONCE or not server:
            await self.app(scope, receive, send)
            return
        mac = proof(self.key, nonce.decode("latin-1"), self.node_id, server[0], server[1] or 0)
        extra = [(PROOF_HEADER.encode(), mac.encode()), (NODE_ID_HEADER.encode(), self.node_id.encode("latin-1"))]

        async def send_with_proof(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_proof)


__all__ = ["CHALLENGE_HEADER", "CHALLENGE_PATH", "NODE_ID_HEADER", "PROOF_HEADER", "NodeProof", "proof"]
