"""Agent chains against the scripted server: dependent prompts, tool delay, chain summary."""

from __future__ import annotations

import pytest

from benchmarks.agent import ChainSpec, chain_summary, tool_results
from benchmarks.client import Endpoint, SampleRequest
from benchmarks.datasets import load_tokenizer
from benchmarks.metrics import RequestRecord
from benchmarks.runner import Workload, run_benchmark_async
from tests.benchmarks.scripted_server import Script, ScriptedServer, chunk, usage

STEP = Script([(0.02, chunk("OUT")), (0.01, chunk("PUT")), (0, usage(5, 2)), (0, "data: [DONE]")])


@pytest.fixture
async def scripted():
    srv = ScriptedServer({"Hello": STEP}, default="step")
    srv.scripts["step"] = STEP
    await srv.start()
    yield srv
    await srv.stop()


@pytest.mark.parametrize("chat", [True, False])
async def test_chain_prompts_grow_with_output_and_tool_result(scripted, demo_model_dir, chat):
    tok = load_tokenizer(demo_model_dir)
    spec = ChainSpec(num_chains=2, steps=3, tool_result_len=16, tool_delay_ms=100)
    tools = tool_results(tok, spec, seed=0)
    assert all(len(tok.encode(t, add_special_tokens=False)) == 16 for chain in tools for t in chain)
    first = [SampleRequest(f"first prompt {i}", 3, 2) for i in range(2)]
    wl = Workload(first, name="agent-chain", chain=spec, tool_results=tools, save_detailed=True)
    ep = Endpoint(scripted.url, "scripted", backend="openai-chat" if chat else "openai")
    res = (await run_benchmark_async([ep], wl, progress=False))[0]
    bodies = scripted.bodies[1:]  # [0] is the pre-flight probe
    assert len(bodies) == 6 and res["completed"] == 6
    for chain in range(2):
        steps = [b for b in bodies if (b["messages"][0]["content"] if chat else b["prompt"]).startswith(
            f"first prompt {chain}")]
        assert len(steps) == 3
        if chat:
            assert [len(b["messages"]) for b in steps] == [1, 3, 5]
            assert steps[2]["messages"][1:] == [
                {"role": "assistant", "content": "OUTPUT"}, {"role": "user", "content": tools[chain][0]},
                {"role": "assistant", "content": "OUTPUT"}, {"role": "user", "content": tools[chain][1]}]
        else:
            assert steps[2]["prompt"] == f"first prompt {chain}" + "OUTPUT" + tools[chain][0] + "OUTPUT" + tools[chain][1]
    a = res["agent"]
    assert a["completed_chains"] == 2 and a["failed_chains"] == 0 and len(a["per_step"]) == 3
    # two tool delays of 100 ms plus three calls of >= 30 ms each
    assert a["p50_chain_ms"] >= 2 * 100 + 3 * 30
    assert a["p50_chain_ms"] < 2 * 100 + 3 * 30 + 250


def test_chain_summary_hand_computed():
    def r(start, ttft, lat, prompt, ok=True):
        return RequestRecord(success=ok, start_time=start, ttft=ttft, latency=lat, prompt_tokens=prompt,
                             output_tokens=4, error="" if ok else "x")

    spec = ChainSpec(num_chains=2, steps=2, tool_result_len=8, tool_delay_ms=0)
    chains = [[r(0.0, 0.1, 0.2, 100), r(0.3, 0.2, 0.4, 1100)],  # chain time 0.7 s
              [r(1.0, 0.1, 0.2, 100), r(1.2, 0.1, 0.1, 1100, ok=False)]]  # failed chain
    s = chain_summary(chains, spec)
    assert s["completed_chains"] == 1 and s["failed_chains"] == 1
    assert s["p50_chain_ms"] == pytest.approx(700.0)
    assert s["per_step"][0]["mean_ttft_ms"] == pytest.approx(100.0)
    assert s["per_step"][1]["completed"] == 1 and s["per_step"][1]["mean_prompt_tokens"] == 1100
    # TTFT 100 ms at 100 tokens, 200 ms at 1100 tokens: +100 ms per 1000 tokens
    assert s["ttft_ms_per_1k_context_tokens"] == pytest.approx(100.0)
