"""Precise prefix mode through a real router over two real sim nodes: the router follows
their KV events, tokenizes as they do, and predicts exactly the cached tokens they report."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.router.conftest import fleet, wait_http, wait_until

pytestmark = pytest.mark.e2e

SYSTEM = "You are a careful coding agent. Read the file, then answer. " * 20  # ~300 sim tokens


@pytest.fixture(scope="module")
def setup(launcher):
    # A's KV pool holds 1024 tokens: two other long prompts evict a conversation.
    a = launcher.node("precise-a", wait=False, kv_capacity_tokens=1024, block_size=16)
    b = launcher.node("precise-b", wait=False, block_size=16)
    for n in (a, b):
        wait_http(n.url + "/ready", n.popen, n.log)
    fleet_file = launcher.tmp / "precise.toml"
    fleet_file.write_text(f'[router]\npoll_interval = 0.2\n\n[[nodes]]\nurl = "{a.url}"\n\n'
                          f'[[nodes]]\nurl = "{b.url}"\n')
    audit = launcher.tmp / "precise.audit.jsonl"
    router = launcher.router("--fleet", str(fleet_file), "--audit-log", str(audit), name="precise-router",
                             wait_ready=False)
    assert wait_until(lambda: [n.get("prefix_mode") for n in fleet(router)["nodes"]] == ["precise"] * 2,
                      timeout=20), fleet(router)
    return router, audit


def audit_lines(audit) -> list[dict]:
    return [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []


def test_precise_mode_predicts_exactly_the_reported_cached_tokens_and_forgets_evicted_blocks(setup):
    router, audit = setup
    c = openai.OpenAI(base_url=router.url + "/v1", api_key="none", max_retries=0,
                      default_headers={"X-Edgefleet-Node": "precise-a"})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fix the parser."}]

    def send(msgs) -> dict:
        before = len(audit_lines(audit))
        c.chat.completions.create(model="sim-model", messages=msgs, max_tokens=4)
        assert wait_until(lambda: len(audit_lines(audit)) > before, timeout=5)
        time.sleep(0.6)  # the follower reads the node's events after the request and every poll
        return audit_lines(audit)[-1]

    first = send(messages)
    assert first["node"] == "precise-a" and first["cached_tokens"] == first["predicted_cached_tokens"] == 0
    again = send(messages)
    assert again["cached_tokens"] > 250  # the node really served most of it from its cache ...
    assert again["predicted_cached_tokens"] == again["cached_tokens"]  # ... and the router knew exactly
    messages += [{"role": "assistant", "content": "Done."}, {"role": "user", "content": "tool result: " + "ok " * 60}]
    step = send(messages)
    assert step["predicted_cached_tokens"] == step["cached_tokens"] >= again["cached_tokens"]
    for k in range(3):  # other conversations fill A's 1024-token pool: the first one is evicted
        send([{"role": "user", "content": f"unrelated task {k}: " + "lorem ipsum " * 120}])
    evicted = send(messages)
    assert evicted["predicted_cached_tokens"] == evicted["cached_tokens"] < step["cached_tokens"]
