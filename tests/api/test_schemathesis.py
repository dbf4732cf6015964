"""Property-based API fuzzing (RELIABILITY "Proving it"): Schemathesis against /openapi.json,
positive and negative modes, NUL bytes allowed: no 5xx. The HTTP layer runs in-process over a
scripted engine so thousands of cases stay fast; the same validation code serves every engine.
The rule itself lives in tests/openapi_fuzz.py (tests/e2e/test_schemathesis_http.py runs it
over real HTTP against a node and a router)."""

from __future__ import annotations

import asyncio

import pytest

schemathesis = pytest.importorskip("schemathesis")
from fastapi import FastAPI  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from fastapi.responses import JSONResponse, PlainTextResponse  # noqa: E402

from server.api.app import build_app  # noqa: E402
from server.config import NodeSettings  # noqa: E402
from server.runtime import NodeRuntime  # noqa: E402
from tests.fakes import ScriptedEngine  # noqa: E402
from tests.openapi_fuzz import check_case, configure, fuzz_every_operation  # noqa: E402


def _app():
    runtime = NodeRuntime(NodeSettings(state_dir="/tmp/edgefleet-schemathesis", allowed_hosts=("testserver",)),
                          ScriptedEngine(tokens=3))
    asyncio.run(runtime.start_engine())
    return build_app(runtime)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
configure(schema, max_examples=60)


@schema.parametrize()
def test_no_5xx_and_every_refusal_is_an_openai_envelope(case):
    check_case(case)


@pytest.mark.parametrize("answer", [PlainTextResponse("bad request", status_code=400),
                                    JSONResponse({"detail": "nope"}, status_code=404),
                                    JSONResponse({"error": {"message": "boom", "type": "x", "param": None,
                                                            "code": "x"}}, status_code=500)])
def test_the_rule_fails_on_a_bare_refusal_or_a_5xx(answer):
    bad = FastAPI()
    bad.get("/thing")(lambda: answer)
    with pytest.raises((AssertionError, FailureGroup)):  # ours, or not_a_server_error's
        fuzz_every_operation(schemathesis.openapi.from_asgi("/openapi.json", bad), max_examples=1)
