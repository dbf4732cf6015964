"""A sim node process: a multi-MiB chat body is tokenized and templated off the event loop,
so a concurrent stream's events keep flowing (RELIABILITY H5). A real socket, because
httpx's in-process ASGI transport hands over a streamed body only once it is complete."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.router.conftest import Launcher

pytestmark = pytest.mark.e2e

MODEL = "sim-model"
MAX_GAP_S = 0.25  # the sim decodes every 5 ms; tokenizing 2 MiB on the loop stalls it for about a second


async def test_a_large_chat_body_does_not_stall_another_stream(tmp_path):
    launcher = Launcher(tmp_path)
    node = launcher.node("big", model=MODEL, prefill_tokens_per_s=1e7, decode_ms=5)
    client = httpx.AsyncClient(base_url=node.url, timeout=60, trust_env=False)
    try:
        gaps: list[float] = []
        started = asyncio.Event()

        async def stream() -> int:
            events = 0
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
                    "stream": True, "ignore_eos": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                last = None
                async for line in resp.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                    events += 1
                    if events == 5:
                        started.set()
            return events

        async def large() -> tuple[int, float]:
            await started.wait()
            content = "abcd" * (512 << 10)  # 2 MiB of prompt text
            raw = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}],
                              "max_tokens": 1}).encode()
            t0 = time.perf_counter()
            resp = await client.post("/v1/chat/completions", content=raw,
                                     headers={"content-type": "application/json"})
            return resp.status_code, time.perf_counter() - t0

        events, (status, took) = await asyncio.gather(stream(), large())
        assert status in (200, 400)  # 400: longer than the sim's context; it was tokenized either way
        assert took > MAX_GAP_S, f"the large body took {took:.3f} s: too little work to prove anything"
        assert events >= 200
        assert max(gaps) < MAX_GAP_S, f"a stream event waited {max(gaps):.3f} s behind the large body"
    finally:
        await client.aclose()
        launcher.close()
