"""The native engine behind the real node app, in-process: cached_tokens in usage, priority
passed through, per-class queue stats, KV events and the llm-d metrics."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server.api.app import build_app
from server.config import NodeSettings
from server.engine.base import GenerateRequest, SamplingOptions
from server.engine.kv_events import block_hashes
from server.runtime import NodeRuntime


async def test_native_node_reports_cache_hits_events_and_llm_d_metrics(llama_dir, tmp_path):
    from server.engine.native import NativeEngine

    settings = NodeSettings(engine="native", dtype="float32", max_model_len=256, state_dir=tmp_path,
                            engine_options={"block_size": 8})
    runtime = NodeRuntime(settings, NativeEngine(settings, llama_dir, "tiny-native"))
    await runtime.start_engine()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(runtime)),
                                     base_url="http://127.0.0.1") as c:
            prompt = list(range(10, 60))  # 50 token ids: 6 full blocks of 8
            body = {"model": "tiny-native", "prompt": prompt, "max_tokens": 2, "temperature": 0}
            first = await c.post("/v1/completions", json=body, headers={"X-Edgefleet-Priority": "-2"})
            second = await c.post("/v1/completions", json={**body, "priority": 3})
            assert first.status_code == 200 and second.status_code == 200
            assert first.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
            assert second.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 48
            events = (await c.get("/v1/kv/events")).json()["events"]
            stored = [h for e in events if e["type"] == "BlockStored" for h in e["block_hashes"]]
            assert stored[:6] == block_hashes(prompt, 8)  # a consumer can compute the same names
            cap = (await c.get("/v1/capacity")).json()
            assert cap["cache"] == {"block_size": 8, "prefix_caching": True, "kv_events": True}
            assert cap["load"]["queue_by_priority"] == []
            families = {f.name: f for f in text_string_to_metric_families((await c.get("/metrics")).text)}
            (info,) = families["vllm:cache_config_info"].samples
            assert info.labels["block_size"] == "8"
            assert int(info.labels["num_gpu_blocks"]) * 8 == cap["load"]["kv_total_tokens"]
            for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                         "vllm:lora_requests_info"):
                assert families[name].type == "gauge"
    finally:
        await runtime.engine.stop()


async def test_native_stats_break_the_queue_down_by_priority(llama_dir):
    from server.engine.native.setup import build_engine

    settings = NodeSettings(engine="native", dtype="float32", max_model_len=128, max_num_seqs=1)
    built = build_engine(settings, llama_dir, "tiny")
    from server.engine.native.engine import NativeEngine

    eng = NativeEngine(settings, llama_dir, "tiny")
    eng.core = built.core  # drive the core by hand: no worker thread, no timing
    sampling = SamplingOptions(max_tokens=4, temperature=0.0, ignore_eos=True)
    eng.core.add_request(GenerateRequest("r0", [1, 2, 3], sampling, priority=0))
    eng.core.step()  # r0 takes the one slot
    for i, prio in ((1, 5), (2, 5), (3, -1)):
        eng.core.add_request(GenerateRequest(f"r{i}", [1 + i, 2, 3], sampling, priority=prio))
    eng._publish_stats()
    st = eng.stats()
    assert st.num_running == 1 and st.waiting_by_priority == {5: (2, 6), -1: (1, 3)}
    assert st.waiting_at_or_before(0) == (1, 3)
    for _ in range(4):  # r0 finishes in the 3rd, the next one is admitted in the 4th
        eng.core.step()
    assert [s.seq_id for s in eng.core.scheduler.running] == ["r3"]  # the urgent one is next
