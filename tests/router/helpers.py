"""Builders for capacity documents and nodes in router unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from server.capacity.schema import Capacity, EngineLoad, Identity, ModelEntry, Performance, Prediction
from server.router.breaker import CircuitBreaker
from server.router.registry import Node, NodeSpec


def capacity(*, model: str = "m", running: int = 0, waiting: int = 0, slots: int = 8, state: str = "ready",
             prefill_tps: float | None = 1000.0, tpot_ms: float | None = 20.0, wait_ms: float = 0.0,
             zone: str | None = None, name: str = "n") -> Capacity:
    per_token = 1000.0 / (prefill_tps or 1000.0)
    return Capacity(
        timestamp=0.0,
        identity=Identity(node_id=name + "-id", name=name, zone=zone, version="t", engine="sim", simulated=True),
        state=state,  # type: ignore[arg-type]
        models=[ModelEntry(id=model, root="sim://m", max_model_len=4096, dtype="simulated")],
        accelerators=[], cpu_only=True,
        load=EngineLoad(running=running, waiting=waiting, waiting_prompt_tokens=0, kv_cache_usage=0.0,
                        kv_free_tokens=1000, kv_total_tokens=1000, max_concurrent_sequences=slots),
        performance=Performance(window_s=60, requests=1, prefill_tokens_per_s=prefill_tps, tpot_p50_ms=tpot_ms),
        idle=running + waiting == 0,
        prediction=Prediction(prompt_tokens=512, max_tokens=128, predicted_ttft_ms=wait_ms + 512 * per_token,
                              predicted_queue_wait_ms=wait_ms, would_admit=True, reason="test"),
    )


def node(url: str, rtt_ms: float = 1.0, **cap_kw) -> Node:
    n = Node.from_spec(NodeSpec(url=url), CircuitBreaker())
    n.on_poll(capacity(**cap_kw), rtt_ms, 0.0)
    return n


def read_requests(rfile: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """(request line, body) of each HTTP/1.1 request on a raw test server's connection."""
    while line := rfile.readline():
        length = 0
        while (h := rfile.readline()) not in (b"\r\n", b""):
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":", 1)[1])
        yield line, rfile.read(length)


def json_200(doc: bytes) -> bytes:
    """A whole 200 response carrying the JSON ``doc``."""
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(doc), doc)
