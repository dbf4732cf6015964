"""Soak at saturation (RELIABILITY "Proving it"): a node process under a bounded burst of
streaming and non-streaming requests keeps its memory flat, loses no request and answers none
twice. The sim engine keeps the engine cheap so the HTTP layer, accounting and streaming are
what is soaked; the real engines are exercised by the other end-to-end tests."""

from __future__ import annotations

import asyncio
import json

import httpx
import psutil
import pytest

from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.e2e
CONCURRENCY = 32


async def _one(client: httpx.AsyncClient, i: int, seen: dict[str, int]) -> str:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": f"request {i}"}], "max_tokens": 8,
            "stream": i % 2 == 0}
    if body["stream"]:
        ids = set()
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        ids = {json.loads(line[6:])["id"] for line in lines[:-1]}
        assert len(ids) == 1
        rid = ids.pop()
    else:
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200
        rid = r.json()["id"]
    seen[rid] = seen.get(rid, 0) + 1
    return rid


async def _drive(url: str, n: int, seen: dict[str, int]) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def guarded(i: int) -> str:
            async with sem:
                return await _one(client, i, seen)
        await asyncio.gather(*(guarded(i) for i in range(n)))


def test_soak_rss_flat_no_request_lost_or_doubled(tmp_path):
    node = NodeProcess("--engine", "sim", "--engine-option", "decode_ms=1", "--engine-option", "decode_ms_per_seq=0",
                       "--max-num-seqs", str(CONCURRENCY), "--state-dir", str(tmp_path), "--log-level", "warning",
                       log_path=tmp_path / "node.log")
    try:
        node.wait_ready(model="sim-model")
        proc = psutil.Process(node.proc.pid)
        warm: dict[str, int] = {}
        asyncio.run(_drive(node.url, 400, warm))  # warm-up: allocator and caches settle
        rss_before = proc.memory_info().rss
        seen: dict[str, int] = {}
        asyncio.run(_drive(node.url, 1600, seen))
        rss_after = proc.memory_info().rss
        assert len(seen) == 1600 and set(seen.values()) == {1}  # none lost, none answered twice
        growth = (rss_after - rss_before) / rss_before
        assert growth < 0.05, f"RSS grew {growth:.1%} ({rss_before >> 20} -> {rss_after >> 20} MiB)"
        cap = httpx.get(node.url + "/v1/capacity", timeout=10).json()
        assert cap["admission"]["in_flight"] == 0 and cap["identity"]["simulated"] is True
    finally:
        node.stop()
