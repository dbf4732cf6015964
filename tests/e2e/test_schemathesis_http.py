"""Schemathesis over real HTTP (RELIABILITY "Proving it", issue #13): a sim node process and a
router process in front of two sim nodes, each fuzzed from its own /openapi.json on a
loopback port, positive and negative, NUL bytes included. The rule (no 5xx, every refusal an
OpenAI envelope) lives in tests/openapi_fuzz.py, shared with the in-process run."""

from __future__ import annotations

import os

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from tests.openapi_fuzz import fuzz_every_operation  # noqa: E402
from tests.router.conftest import Launcher  # noqa: E402

pytestmark = pytest.mark.e2e

NODE_KEY, CLIENT_KEY, ADMIN_KEY = "fuzz-node-key", "fuzz-client-key", "fuzz-admin-key"
# Fast sim timing: a positive case may ask for hundreds of tokens; max_model_len bounds them.
SIM = {"decode_ms": 0.1, "decode_ms_per_seq": 0.0, "prefill_tokens_per_s": 1e6, "max_model_len": 512}
PROXIED = ("/v1/chat/completions", "/v1/completions")
# Per operation and mode: the runs together stay under a minute on 2 busy cores. A longer
# hunt: EDGEFLEET_FUZZ_EXAMPLES=200 pytest tests/e2e/test_schemathesis_http.py
EXAMPLES = int(os.environ.get("EDGEFLEET_FUZZ_EXAMPLES", "10"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    launch = Launcher(tmp_path_factory.mktemp("fuzz"))
    try:
        keyed = launch.node("fuzz-a", extra=["--api-key", NODE_KEY], **SIM)
        open_node = launch.node("fuzz-b", **SIM)
        fleet_file = launch.tmp / "fleet.toml"
        fleet_file.write_text(f'[[nodes]]\nurl = "{keyed.url}"\napi_key = "{NODE_KEY}"\n\n'
                              f'[[nodes]]\nurl = "{open_node.url}"\n')
        router = launch.router("--fleet", str(fleet_file), "--poll-interval", "0.3", "--api-key", CLIENT_KEY,
                               "--admin-key", ADMIN_KEY)
        yield keyed, router
    finally:
        launch.close()
    for proc in launch.procs:  # a crash or traceback while fuzzing is a failure even if every answer was fine
        assert "Traceback" not in proc.log.read_text(), proc.log.read_text()[-3000:]


def fuzz(url: str, key: str, skip: tuple[str, ...] = ()):
    headers = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_url(url + "/openapi.json", headers=headers, timeout=10)
    schema.config.update(base_url=url, headers=headers, request_timeout=30)
    if skip:
        schema = schema.exclude(path=list(skip))
    return fuzz_every_operation(schema, max_examples=EXAMPLES)


def assert_every_operation_ran(sent, url: str, key: str, skip: tuple[str, ...] = ()) -> None:
    doc = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    doc["paths"] = {p: ops for p, ops in doc["paths"].items() if p not in skip}
    listed = {f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method in ops}
    assert {label for label, _ in sent} == listed
    # operations with a body or parameters were also sent invalid input
    with_input = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m, op in ops.items()
                  if op.get("requestBody") or any(x["in"] != "path" for x in op.get("parameters", ()))}
    assert with_input and all(sent[(label, "negative")] > 0 for label in with_input), sent


def test_node_over_http(fleet):
    node, _ = fleet
    sent = fuzz(node.url, NODE_KEY)
    assert_every_operation_ran(sent, node.url, NODE_KEY)
    assert sent[("POST /v1/chat/completions", "positive")] == EXAMPLES


@pytest.mark.parametrize("key, skip", [(ADMIN_KEY, ()), (CLIENT_KEY, PROXIED)], ids=["admin-key", "client-key"])
def test_router_over_http(fleet, key, skip):
    """The admin key reaches the fleet internals; a client key gets 403 envelopes there. The
    proxied paths (the router's /openapi.json documents them) run once, with the admin key:
    the proxy treats both keys alike, and the bodies are the slowest cases to generate."""
    _, router = fleet
    sent = fuzz(router.url, key, skip)
    assert_every_operation_ran(sent, router.url, key, skip)
    if not skip:
        assert sent[("POST /v1/chat/completions", "negative")] == EXAMPLES
    assert httpx.get(router.url + "/ready", timeout=5).status_code == 200  # both nodes still serve
