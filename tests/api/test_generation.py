"""server/api/generation.py: the context-length contract, engine failures as ApiErrors,
n sequences with distinct seeds, accounting released on every path."""

from __future__ import annotations

import pytest

from server.api.generation import Generation, check_model_and_n, engine_error, resolve_max_tokens
from server.config import NodeSettings
from server.edge.errors import (ContextLengthExceeded, EngineUnavailable, InternalError, InvalidRequest,
                                ModelNotFound)
from server.engine.base import EngineDeadError, EngineError, InvalidRequestForEngine, SamplingOptions
from server.runtime import NodeRuntime
from tests.fakes import ScriptedEngine


@pytest.fixture
async def runtime(tmp_path):
    rt = NodeRuntime(NodeSettings(state_dir=tmp_path, max_n=4), ScriptedEngine(tokens=3))  # max_model_len 256
    await rt.start_engine()
    return rt


async def test_max_tokens_is_refused_never_truncated(runtime):
    assert resolve_max_tokens(runtime, 100, None) == 156  # the rest of the context
    assert resolve_max_tokens(runtime, 100, 156) == 156
    with pytest.raises(ContextLengthExceeded) as over:
        resolve_max_tokens(runtime, 100, 157)
    assert over.value.param == "max_tokens" and "(257 in total)" in over.value.message
    with pytest.raises(ContextLengthExceeded) as prompt:
        resolve_max_tokens(runtime, 256, None)
    assert prompt.value.param == "messages" and prompt.value.code == "context_length_exceeded"


async def test_model_and_n_are_checked(runtime):
    check_model_and_n(runtime, "fake-model", 4)
    with pytest.raises(ModelNotFound) as model:
        check_model_and_n(runtime, "other", 1)
    assert model.value.status_code == 404 and model.value.param == "model"
    with pytest.raises(InvalidRequest) as n:
        check_model_and_n(runtime, "fake-model", 5)
    assert n.value.param == "n" and "at most 4" in n.value.message


@pytest.mark.parametrize("exc, cls, status, code", [
    (InvalidRequestForEngine("bad grammar", param="response_format"), InvalidRequest, 400, "invalid_request_error"),
    (EngineDeadError("gone"), EngineUnavailable, 503, "engine_unavailable"),
    (EngineError("CUDA out of memory at 0xdeadbeef"), InternalError, 500, "engine_error"),
    (RuntimeError("surprise"), InternalError, 500, "internal_error"),
])
def test_engine_failures_become_api_errors(exc, cls, status, code):
    err = engine_error(exc)
    assert type(err) is cls and err.status_code == status and err.code == code
    assert "0xdeadbeef" not in err.message and "surprise" not in err.message


async def test_n_sequences_get_distinct_reproducible_seeds_and_release_accounting(runtime):
    seen: list[int | None] = []
    real = runtime.engine.generate

    def spy(req):
        seen.append(req.sampling.seed)
        return real(req)

    runtime.engine.generate = spy  # type: ignore[method-assign]
    gen = Generation(runtime, "req-1", [1, 2, 3], SamplingOptions(max_tokens=3, seed=7), n=3)
    assert set(runtime.active) == {"req-1"} and runtime.active["req-1"].engine_ids == ["req-1-0", "req-1-1", "req-1-2"]
    items = [item async for item in gen.stream()]
    assert sorted(seen) == [7, 8, 9]
    assert sorted({i for i, _ in items}) == [0, 1, 2] and len(items) == 9 and gen.finish == "length"
    assert runtime.active == {}  # closed by the stream's end


async def test_a_failing_sequence_is_an_api_error_and_still_releases(runtime):
    runtime.engine.fail_prompt = "x"  # type: ignore[attr-defined]
    gen = Generation(runtime, "req-2", runtime.engine.tokenize("x"), SamplingOptions(max_tokens=3), n=1)
    with pytest.raises(InternalError) as err:
        async for _ in gen.stream():
            pass
    assert err.value.code == "engine_error" and runtime.active == {}
