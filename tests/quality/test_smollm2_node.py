"""The default model end to end: `edgefleet serve` with no --model, on the native engine
(answers, stop strings, the capacity document, /tokenize) and once on vLLM, the README's
command (converted once from the GGUF, then served): greedy agreement with transformers,
json_schema and forced tool calls, which need vLLM's structured outputs (the native engine
refuses them with a 400)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.quality.conftest import QUESTIONS

pytestmark = pytest.mark.e2e
MODEL = "SmolLM2-135M-Instruct"


def chat(node, content: str, **kw) -> dict:
    r = httpx.post(node.url + "/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_capacity_says_a_real_model_from_a_gguf_file(smollm2_native_node) -> None:
    cap = httpx.get(smollm2_native_node.url + "/v1/capacity", timeout=10).json()
    m = cap["models"][0]
    assert m["id"] == MODEL and m["random_weights"] is False
    assert m["source"] == "gguf:SmolLM2-135M-Instruct.Q4_1.gguf" and m["converted"] is False
    assert m["quantization"] == "gguf-q4_1" and "int4 g32" in m["quantization_reason"]
    assert m["dtype"] == "float32"


def test_the_node_answers(smollm2_native_node) -> None:
    body = chat(smollm2_native_node, QUESTIONS[0][0], max_tokens=20)
    choice = body["choices"][0]
    assert choice["message"]["content"] == "The capital of France is Paris."
    assert choice["finish_reason"] == "stop"  # <|im_end|> ends the turn


def test_stop_string_against_the_real_model(smollm2_native_node) -> None:
    full = chat(smollm2_native_node, QUESTIONS[0][0], max_tokens=20)["choices"][0]["message"]["content"]
    assert " is " in full
    body = chat(smollm2_native_node, QUESTIONS[0][0], max_tokens=20, stop=[" is "])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == full.split(" is ")[0]


def test_tokenize_on_the_real_model(smollm2_native_node, smollm2_parts) -> None:
    _, _, tok = smollm2_parts
    r = httpx.post(smollm2_native_node.url + "/tokenize", json={"model": MODEL, "prompt": "Four score and seven"})
    assert r.json()["tokens"] == tok.encode("Four score and seven", add_special_tokens=False)


@pytest.fixture(scope="module")
def vllm_node(smollm2, tmp_path_factory):
    """The only vLLM start of this test set: the README's `edgefleet serve` (engine vllm)."""
    from tests.nodeproc import NodeProcess

    tmp = tmp_path_factory.mktemp("smollm2-vllm")
    node = NodeProcess("--kv-cache-gb", "0.25", "--max-model-len", "2048", "--max-num-seqs", "4",
                       "--state-dir", str(tmp / "state"), log_path=tmp / "node.log")
    try:
        node.wait_ready(model=MODEL)
        yield node
    finally:
        node.stop()


def test_native_engine_refuses_structured_outputs_clearly(smollm2_native_node) -> None:
    r = httpx.post(smollm2_native_node.url + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


def test_default_vllm_node_serves_the_converted_model(vllm_node, transformers_answers, smollm2_parts) -> None:
    """Greedy answers equal transformers' on the same float weights."""
    _, _, tok = smollm2_parts
    m = httpx.get(vllm_node.url + "/v1/capacity", timeout=10).json()["models"][0]
    assert m["converted"] is True and m["source"] == "gguf:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert m["random_weights"] is False and m["dtype"] == "float32"
    for q, answer in QUESTIONS:
        text = chat(vllm_node, q, max_tokens=16)["choices"][0]["message"]["content"]
        assert text == tok.decode(transformers_answers[q]), (q, text)
        if answer:
            assert answer in text


def test_json_schema_against_the_real_model(vllm_node) -> None:
    schema = {"type": "object", "properties": {"country": {"type": "string"}, "capital": {"type": "string"}},
              "required": ["country", "capital"], "additionalProperties": False}
    body = chat(vllm_node, "What is the capital of France? Answer in JSON.", max_tokens=60,
                response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    obj = json.loads(body["choices"][0]["message"]["content"])
    jsonschema.validate(obj, schema)
    assert "Paris" in obj["capital"], obj


def test_tool_call_against_the_real_model(vllm_node) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    body = chat(vllm_node, "What is the weather like in Paris today?", max_tokens=40, tools=tools,
                tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = body["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and choice["finish_reason"] in ("tool_calls", "stop")
    args = json.loads(call["function"]["arguments"])
    assert "paris" in args["city"].lower(), args
