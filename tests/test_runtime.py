"""server/runtime.py: one admission rule for admit() and the capacity report, and accounting."""

from __future__ import annotations

import pytest

from server.capacity.perf import Prediction
from server.config import NodeSettings
from server.edge.errors import NotReady, Overloaded
from server.runtime import NodeRuntime
from tests.fakes import ScriptedEngine


@pytest.fixture
async def runtime(tmp_path):
    rt = NodeRuntime(NodeSettings(state_dir=tmp_path, max_num_seqs=2, max_queued_requests=1),
                     ScriptedEngine(max_num_seqs=2))
    await rt.start_engine()
    return rt


def fill(rt: NodeRuntime, sequences: int) -> None:
    for i in range(sequences):
        rt.begin(f"r{i}", [f"r{i}-0"], 10, 0.0)


def would_admit(rt: NodeRuntime) -> bool:
    return rt.capacity(prompt_tokens=10, max_tokens=10).prediction.would_admit


async def test_admit_and_would_admit_agree_up_to_queue_full(runtime):
    # 2 running slots + 1 queue place: the 4th sequence in flight is refused, by both.
    for in_flight, expected in ((0, True), (1, True), (2, True), (3, False), (4, False)):
        fill(runtime, in_flight)
        assert would_admit(runtime) is expected, in_flight
        if expected:
            runtime.admit(10)
        else:
            with pytest.raises(Overloaded) as err:
                runtime.admit(10)
            assert err.value.code == "server_overloaded" and "Queue is full" in err.value.message
            assert runtime.refusal(10).code == "queue_full"
            assert "queue full" in runtime.capacity(prompt_tokens=10).prediction.reason
        runtime.active.clear()


async def test_n_sequences_count_against_the_queue(runtime):
    fill(runtime, 2)
    runtime.admit(10, n=1)  # one more queues
    with pytest.raises(Overloaded):
        runtime.admit(10, n=2)  # two more would overflow the one queue place


async def test_queue_wait_is_checked_only_for_a_request_that_would_queue(runtime, monkeypatch):
    runtime.settings = runtime.settings.model_copy(update={"max_queue_wait": 1.0})
    monkeypatch.setattr(runtime, "predict", lambda _p, _priority=0: Prediction(0.5, 5.0, "test"))
    assert runtime.refusal(10) is None  # free slot: it would run now, whatever the prediction
    assert would_admit(runtime) is True
    fill(runtime, 2)
    refused = runtime.refusal(10)
    assert refused is not None and refused.code == "queue_wait" and refused.queue_wait_s == 5.0
    assert would_admit(runtime) is False
    with pytest.raises(Overloaded, match="Predicted queue wait 5.0 s exceeds 1.0 s"):
        runtime.admit(10)


async def test_not_ready_is_refused_by_both(runtime):
    runtime.state = "draining"
    with pytest.raises(NotReady) as err:
        runtime.admit(10)
    assert err.value.code == "not_ready" and err.value.headers == {"Retry-After": "5"}
    pred = runtime.capacity(prompt_tokens=10).prediction
    assert pred.would_admit is False and pred.reason.startswith("node is draining")


async def test_too_long_is_refused_only_by_the_report(runtime):
    # The context limit belongs to the request path (resolve_max_tokens), not to admission.
    runtime.admit(300)
    pred = runtime.capacity(prompt_tokens=200, max_tokens=100).prediction
    assert pred.would_admit is False and "max_model_len 256" in pred.reason


async def test_end_records_timings_only_for_finished_requests(runtime):
    a = runtime.begin("ok", ["ok-0"], 10, 0.0)
    runtime.on_tokens(a, 3)
    runtime.end("ok", "stop")
    b = runtime.begin("gone", ["gone-0"], 10, 0.0)
    runtime.on_tokens(b, 1)
    runtime.end("gone", "abort")
    assert runtime.active == {} and runtime.perf.summary()["requests"] == 1


async def test_slots_are_the_engines_own_figure(tmp_path):
    """An engine option may run fewer sequences than --max-num-seqs: admission, the prediction
    and the capacity document all count the engine's slots."""
    rt = NodeRuntime(NodeSettings(state_dir=tmp_path, max_num_seqs=32, max_queued_requests=1),
                     ScriptedEngine(max_num_seqs=1))
    await rt.start_engine()
    assert rt.slots() == 1
    fill(rt, 2)  # one running, one queued
    assert rt.queued() == 1
    assert rt.capacity(prompt_tokens=10).load.max_concurrent_sequences == 1
    assert would_admit(rt) is False  # a third would exceed the one queue place
