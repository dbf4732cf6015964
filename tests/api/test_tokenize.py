"""POST /tokenize and /detokenize (vLLM's shapes) on the native engine's real tokenizer
(the demo model, in process), and the benchmark's fallback to them against a sim node."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from server.api.app import build_app
from server.config import NodeSettings
from server.runtime import NodeRuntime
from tests.nodeproc import VENV_BIN, NodeProcess

EDGEFLEET = str(VENV_BIN / "edgefleet")


@pytest.fixture(scope="module")
async def client(demo_model_dir: Path, tmp_path_factory):
    from server.engine.native import NativeEngine

    settings = NodeSettings(engine="native", model=str(demo_model_dir), dtype="float32", max_model_len=256,
                            kv_cache_gb=0.01, state_dir=tmp_path_factory.mktemp("state"))
    engine = NativeEngine(settings, demo_model_dir, "edgefleet-demo-random")
    runtime = NodeRuntime(settings, engine)
    await runtime.start_engine()
    app = build_app(runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        c.engine = engine  # type: ignore[attr-defined]
        yield c
    await engine.stop()


async def test_tokenize_prompt_matches_the_engine_and_round_trips(client):
    r = await client.post("/tokenize", json={"model": "edgefleet-demo-random", "prompt": "hello world"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == client.engine.tokenize("hello world")
    assert body["count"] == len(body["tokens"]) > 0 and body["max_model_len"] == 256
    d = await client.post("/detokenize", json={"model": "edgefleet-demo-random", "tokens": body["tokens"]})
    assert d.status_code == 200 and d.json()["prompt"].strip() == "hello world"


async def test_tokenize_messages_applies_the_chat_template(client):
    msgs = [{"role": "user", "content": "hello"}]
    with_prompt = (await client.post("/tokenize", json={"messages": msgs})).json()
    without = (await client.post("/tokenize", json={"messages": msgs, "add_generation_prompt": False})).json()
    assert with_prompt["tokens"] == client.engine.render_chat(msgs, None)
    assert with_prompt["tokens"][:without["count"]] == without["tokens"]
    assert with_prompt["count"] > without["count"]  # "<|im_start|>assistant\n"
    text = (await client.post("/detokenize", json={"tokens": with_prompt["tokens"]})).json()["prompt"]
    assert "hello" in text and text.rstrip().endswith("assistant")


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 400, None),
    ({}, 400, None),
    ({"model": "other", "prompt": "x"}, 404, "model"),
])
async def test_tokenize_bad_input_is_an_openai_envelope(client, body, status, param):
    r = await client.post("/tokenize", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param:
        assert err["param"] == param


async def test_detokenize_bad_ids_are_a_400(client):
    for tokens in ([-1], [10**9]):
        r = await client.post("/detokenize", json={"tokens": tokens})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens", r.text


@pytest.mark.e2e
def test_bench_random_and_agent_datasets_use_the_nodes_tokenizer(tmp_path: Path):
    """A sim node has no tokenizer directory anywhere: the datasets come from /tokenize."""
    node = NodeProcess("--engine", "sim", "--engine-option", "decode_ms=1", "--served-model-name", "sim-model",
                       "--state-dir", str(tmp_path / "state"), log_path=tmp_path / "node.log")
    try:
        node.wait_ready(model="sim-model")
        for extra in (["--dataset-name", "random", "--random-input-len", "32", "--random-output-len", "4"],
                      ["--workload", "agent-chain", "--dataset-name", "random", "--random-input-len", "16",
                       "--random-output-len", "2", "--num-chains", "2", "--chain-steps", "2", "--tool-result-len",
                       "8", "--tool-delay-ms", "1"]):
            res_dir = tmp_path / extra[1]
            out = subprocess.run([EDGEFLEET, "bench", "serve", "--base-url", node.url, "--num-prompts", "3",
                                  *extra, "--save-result", "--result-dir", str(res_dir), "--disable-tqdm"],
                                 capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, out.stderr[-3000:]
            res = json.loads(next(res_dir.glob("*.json")).read_text())
            assert res["failed"] == 0 and res["completed"] > 0
    finally:
        node.stop()


def test_bench_without_tokenizer_or_tokenize_endpoint_is_a_clear_error(tmp_path: Path):
    out = subprocess.run([EDGEFLEET, "bench", "serve", "--base-url", "http://127.0.0.1:9", "--model", "m",
                          "--dataset-name", "random", "--num-prompts", "1", "--disable-tqdm"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--tokenizer" in out.stderr and "/tokenize" in out.stderr and "Traceback" not in out.stderr
