"""Property-based API fuzzing (RELIABILITY "Proving it"): Schemathesis against /openapi.json,
positive and negative modes, NUL bytes allowed: no 5xx. The HTTP layer runs in-process over a
scripted engine so thousands of cases stay fast; the same validation code serves every engine."""

from __future__ import annotations

import asyncio

import pytest

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402

from server.api.app import build_app  # noqa: E402
from server.config import NodeSettings  # noqa: E402
from server.runtime import NodeRuntime  # noqa: E402
from tests.fakes import ScriptedEngine  # noqa: E402


def _app():
    runtime = NodeRuntime(NodeSettings(state_dir="/tmp/edgefleet-schemathesis", allowed_hosts=("testserver",)),
                          ScriptedEngine(tokens=3))
    asyncio.run(runtime.start_engine())
    return build_app(runtime)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=60,
                                allow_x00=True, deterministic=True)


@schema.parametrize()
def test_no_5xx_and_every_refusal_is_an_openai_envelope(case):
    response = case.call_and_validate(checks=[not_a_server_error])
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}, response.text
