"""The async front: Engine protocol, streaming, cancellation frees KV, clear 400s."""

from __future__ import annotations

import asyncio

import pytest

from server.config import NodeSettings
from server.engine.base import Engine, GenerateRequest, InvalidRequestForEngine, SamplingOptions


@pytest.fixture(scope="module")
async def engine(llama_dir):
    from server.engine.native import NativeEngine

    eng = NativeEngine(NodeSettings(engine="native", dtype="float32", max_model_len=256,
                                    engine_options={"block_size": 8}), llama_dir, "tiny-native")
    await eng.start()
    yield eng
    await eng.stop()
    assert not eng.is_healthy()


def opts(n=8, **kw):
    return SamplingOptions(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


async def test_protocol_and_info(engine):
    assert isinstance(engine, Engine) and engine.name == "native"
    assert engine.is_healthy()
    info = engine.info
    assert info.id == "tiny-native" and info.max_model_len == 256 and info.dtype == "float32"
    assert info.random_weights and info.weight_bytes > 0 and info.quantization is None
    st = engine.stats()
    assert st.kv_total_tokens > 0 and st.max_num_seqs == 32


async def test_stream_one_delta_per_step_with_cumulative_counts(engine):
    ids = engine.tokenize("hello world")
    deltas = [d async for d in engine.generate(GenerateRequest("s1", ids, opts(6)))]
    assert [d.completion_tokens for d in deltas] == [1, 2, 3, 4, 5, 6]
    assert all(d.prompt_tokens == len(ids) for d in deltas)
    assert deltas[-1].finish_reason == "length" and all(d.finish_reason is None for d in deltas[:-1])


async def test_concurrent_requests_match_solo_runs(engine):
    prompts = [engine.tokenize(t) for t in ("the model", "a story about edge", "tell me the weather")]

    async def run(i, p):
        return [t async for d in engine.generate(GenerateRequest(f"c{i}", p, opts(10))) for t in d.token_ids]

    together = await asyncio.gather(*(run(i, p) for i, p in enumerate(prompts)))
    alone = [await run(10 + i, p) for i, p in enumerate(prompts)]
    assert together == alone


async def test_cancelling_the_iterator_aborts_and_frees_kv(engine):
    gen = engine.generate(GenerateRequest("cancel", engine.tokenize("hello"), opts(200)))
    await gen.__anext__()
    await gen.aclose()
    for _ in range(200):
        if engine.stats().num_running == 0 and "cancel" not in engine.core.requests:
            break
        await asyncio.sleep(0.01)
    assert engine.stats().num_running == 0
    assert "cancel" not in engine.core.requests


async def test_abort_ends_the_stream(engine):
    seen = []

    async def consume():
        async for d in engine.generate(GenerateRequest("ab", engine.tokenize("hello"), opts(200))):
            seen.append(d)

    task = asyncio.create_task(consume())
    while not seen:
        await asyncio.sleep(0.005)
    await engine.abort("ab")
    await asyncio.wait_for(task, 10)
    assert seen[-1].finish_reason == "abort" and len(seen) < 200


@pytest.mark.parametrize("kw,param", [
    ({"json_object": True}, "response_format"),
    ({"json_schema": {"type": "object"}}, "response_format"),
    ({"max_tokens": 10_000}, "max_tokens"),
])
async def test_unsupported_is_invalid_request_before_first_delta(engine, kw, param):
    s = opts(**{"n": kw.pop("max_tokens", 4)}, **kw)
    with pytest.raises(InvalidRequestForEngine) as e:
        async for _ in engine.generate(GenerateRequest("bad", [1, 2, 3], s)):
            pytest.fail("a delta came before the error")
    assert e.value.param == param
    deltas = [d async for d in engine.generate(GenerateRequest("ok", [5, 6], opts(2)))]
    assert deltas[-1].completion_tokens == 2  # the engine serves on


async def test_render_chat_uses_the_model_template(engine):
    ids = engine.render_chat([{"role": "user", "content": "hi"}], None)
    text = engine.tokenizer.decode(ids, skip_special_tokens=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    assert "get_weather" in engine.tokenizer.decode(engine.render_chat(
        [{"role": "user", "content": "hi"}], tools))


async def test_logprobs_in_deltas(engine):
    deltas = [d async for d in engine.generate(GenerateRequest("lp", [5, 6, 7], opts(3, logprobs=2)))]
    for d in deltas:
        [pos] = d.logprobs
        assert pos.sampled.token_id == d.token_ids[0] and len(pos.top) == 2
        assert pos.top[0].logprob >= pos.sampled.logprob - 1e-6  # greedy: sampled is the top
