"""SimEngine: modelled timings, batching, admission limits, cancellation, labelling."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.config import NodeSettings
from server.engine.base import Engine, GenerateRequest, InvalidRequestForEngine, SamplingOptions
from server.engine.sim import SIM_NOTE, SimEngine


def make(**opts) -> SimEngine:
    return SimEngine(NodeSettings(engine="sim", engine_options=opts), "sim-model")


def req(rid: str, prompt: int, max_tokens: int) -> GenerateRequest:
    return GenerateRequest(rid, list(range(prompt)), SamplingOptions(max_tokens=max_tokens))


async def run(engine: SimEngine, r: GenerateRequest) -> tuple[float, float, list]:
    t0 = time.monotonic()
    ttft = None
    deltas = []
    async for d in engine.generate(r):
        if ttft is None:
            ttft = time.monotonic() - t0
        deltas.append(d)
    return ttft, time.monotonic() - t0, deltas


async def test_protocol_and_labels():
    eng = make()
    assert isinstance(eng, Engine)
    assert eng.name == "sim"
    assert eng.info.note == SIM_NOTE and "simulated" in eng.info.note
    assert eng.info.id == "sim-model" and eng.info.root.startswith("sim://")
    assert eng.tool_parser("hermes") is not None


def test_unknown_option_rejected():
    with pytest.raises(ValueError, match="unknown sim engine option"):
        make(prefil_tokens_per_s=5)
    with pytest.raises(ValueError):
        make(prefill_tokens_per_s=0)


async def test_ttft_follows_prefill_rate_and_decode_time():
    eng = make(prefill_tokens_per_s=2000, decode_ms=10, decode_ms_per_seq=0)
    await eng.start()
    try:
        ttft, e2e, deltas = await run(eng, req("a", 200, 5))  # 100 ms prefill + 10 ms step
        assert 0.10 <= ttft < 0.16
        assert 0.14 <= e2e < 0.25  # + 4 steps of 10 ms
        assert [d.completion_tokens for d in deltas] == [1, 2, 3, 4, 5]
        assert deltas[-1].finish_reason == "length" and all(d.finish_reason is None for d in deltas[:-1])
        assert deltas[0].prompt_tokens == 200 and deltas[0].text == " tok"
        assert eng.stats().num_running == 0 and eng.stats().kv_cache_usage == 0
    finally:
        await eng.stop()


async def test_batch_size_slows_steps_and_max_seqs_queues():
    eng = make(prefill_tokens_per_s=1e9, decode_ms=5, decode_ms_per_seq=5, max_num_seqs=2)
    await eng.start()
    try:
        results = await asyncio.gather(*(run(eng, req(f"r{i}", 4, 4)) for i in range(3)))
        ttfts = sorted(r[0] for r in results)
        # Two run together (steps of 5 + 2*5 = 15 ms); the third waits for a free slot.
        assert ttfts[1] < 0.04
        assert ttfts[2] >= 0.05
        assert eng.stats().steps >= 8
    finally:
        await eng.stop()


async def test_kv_capacity_limits_admission_and_stats():
    eng = make(prefill_tokens_per_s=1e9, decode_ms=10, decode_ms_per_seq=0, kv_capacity_tokens=100,
               block_size=1, enable_prefix_caching=False)
    await eng.start()
    try:
        with pytest.raises(InvalidRequestForEngine):
            async for _ in eng.generate(req("big", 90, 20)):
                pass
        first = asyncio.ensure_future(run(eng, req("a", 50, 10)))
        second = asyncio.ensure_future(run(eng, req("b", 31, 10)))  # 60 + 41 > 100: waits
        await asyncio.sleep(0.03)
        s = eng.stats()
        assert s.num_running == 1 and s.num_waiting == 1 and s.waiting_prompt_tokens == 31
        assert s.kv_cache_usage == pytest.approx(0.6) and s.kv_total_tokens == 100
        (_, e2e_a, _), (ttft_b, _, _) = await asyncio.gather(first, second)
        assert ttft_b >= 0.09  # admitted only after a finished
    finally:
        await eng.stop()


async def test_cancel_frees_slot_and_kv():
    eng = make(prefill_tokens_per_s=1e9, decode_ms=5)
    await eng.start()
    try:
        async def consume():
            async for _ in eng.generate(req("c", 10, 10_000)):
                pass
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        assert eng.stats().num_running == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        s = eng.stats()
        assert s.num_running == 0 and s.kv_cache_usage == 0
    finally:
        await eng.stop()


async def test_abort_ends_stream():
    eng = make(prefill_tokens_per_s=1e9, decode_ms=5)
    await eng.start()
    try:
        gen = eng.generate(req("x", 10, 10_000))
        first = await gen.__anext__()
        assert first.finish_reason is None
        await eng.abort("x")
        last = None
        async for d in gen:
            last = d
        assert last is not None and last.finish_reason == "abort"
        assert eng.stats().num_running == 0
    finally:
        await eng.stop()


async def test_network_delay_adds_to_ttft():
    eng = make(prefill_tokens_per_s=1e9, decode_ms=5, decode_ms_per_seq=0, network_delay_ms=80)
    await eng.start()
    try:
        ttft, _, _ = await run(eng, req("d", 10, 1))
        assert 0.08 <= ttft < 0.15
        assert eng.response_delay_s == pytest.approx(0.08)
    finally:
        await eng.stop()


def test_tokenize_and_render_chat_scale_with_text():
    eng = make(chars_per_token=4)
    assert len(eng.tokenize("abcdefgh", add_special_tokens=False)) == 2
    assert eng.tokenize("abcd") == eng.tokenize("abcd")
    short = eng.render_chat([{"role": "user", "content": "hi"}], None)
    long = eng.render_chat([{"role": "user", "content": "hi " * 400}], None)
    assert len(long) - len(short) >= 290
