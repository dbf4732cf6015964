"""ModelHost decisions with fake engines: on-demand loads, shared loads, keep_alive, pinning,
placement within the budget, failures and back-off, sleep and wake, shutdown during a load."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.capacity.perf import RequestTiming
from server.capacity.schema import SCHEMA_VERSION
from server.host import ModelUnavailable, UnknownModel
from tests.host.hostfakes import Clock, make_host, request


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_nothing_loads_until_asked_then_one_request_loads_it(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {}, "b": {}})
    await host.start_engine()
    assert host.state == "ready" and log == []
    assert {s.state for s in host.slots.values()} == {"unloaded"}
    rt = await host.acquire("a")
    assert rt.engine.info.id == "a" and host.slots["a"].state == "loaded" and host.slots["b"].state == "unloaded"
    assert log == ["start a"] and host.slots["a"].load_s is not None
    assert await host.acquire("a") is rt and log == ["start a"]  # warm: no second load
    await host.stop()


async def test_concurrent_first_requests_share_one_load(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {"start_s": 0.05}})
    await host.start_engine()
    runtimes = await asyncio.gather(*(host.acquire("a") for _ in range(8)))
    assert log == ["start a"]
    assert all(r is runtimes[0] for r in runtimes)
    await host.stop()


async def test_a_cancelled_waiter_does_not_cancel_the_load_others_wait_on(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {"start_s": 0.1}})
    await host.start_engine()
    quitter = asyncio.create_task(host.acquire("a"))
    stayer = asyncio.create_task(host.acquire("a"))
    await asyncio.sleep(0.02)
    quitter.cancel()  # the client disconnected
    rt = await stayer
    assert quitter.cancelled() and rt.engine.info.id == "a" and host.slots["a"].state == "loaded"
    assert log == ["start a"]
    await host.stop()


async def test_unknown_model(tmp_path):
    host, _, _ = make_host(tmp_path, {"a": {}})
    await host.start_engine()
    with pytest.raises(UnknownModel):
        await host.acquire("nope")


async def test_keep_alive_zero_unloads_after_the_last_request_ends(tmp_path):
    host, log, engines = make_host(tmp_path, {"a": {"keep_alive": 0.0}})
    await host.start_engine()
    rt = await host.acquire("a")
    done1 = request(rt, "r1")
    done2 = request(rt, "r2")
    done1()
    await settle()
    assert host.slots["a"].state == "loaded"  # one request still running
    done2()
    await settle()
    assert host.slots["a"].state == "unloaded" and log == ["start a", "stop a"]
    assert host.slots["a"].runtime is None and not engines["a"].running
    rt2 = await host.acquire("a")  # and the next request loads it again
    assert rt2 is not rt and log[-1] == "start a"
    await host.stop()


async def test_a_held_model_stays_loaded_while_its_request_prepares(tmp_path):
    """keep_alive 0: between acquire and admission (the prompt tokenized off the loop) the
    idle timer must not release the model; once unheld with nothing admitted, it goes."""
    host, log, _ = make_host(tmp_path, {"a": {"keep_alive": 0.0}})
    await host.start_engine()
    rt = await host.acquire("a")
    host.hold("a")
    await asyncio.sleep(0.6)  # past keep_alive 0 and the idle check's 0.5 s second look
    assert host.slots["a"].state == "loaded" and log == ["start a"]
    with pytest.raises(ModelUnavailable):  # an admin unload waits for it too
        await host.unload("a")
    finish = request(rt)  # admitted: now the request itself keeps it
    host.unhold("a")
    await settle()
    assert host.slots["a"].state == "loaded"
    finish()
    await settle()
    assert host.slots["a"].state == "unloaded" and log == ["start a", "stop a"]
    await host.acquire("a")  # a 400 before admission: unhold alone starts keep_alive
    host.hold("a")
    host.unhold("a")
    await settle()
    assert host.slots["a"].state == "unloaded" and log == ["start a", "stop a", "start a", "stop a"]
    await host.stop()


async def test_keep_alive_duration_unloads_only_after_idle_that_long(tmp_path):
    host, _, _ = make_host(tmp_path, {"a": {"keep_alive": 0.15}})
    await host.start_engine()
    rt = await host.acquire("a")
    request(rt)()
    await asyncio.sleep(0.05)
    assert host.slots["a"].state == "loaded"
    await asyncio.sleep(0.2)
    assert host.slots["a"].state == "unloaded" and "idle past keep_alive" in host.slots["a"].reason
    await host.stop()


async def test_keep_alive_never_and_pinned_never_unload(tmp_path):
    host, log, _ = make_host(tmp_path, {"never": {"keep_alive": None}, "pin": {"keep_alive": 0.0, "pinned": True}})
    await host.start_engine()
    assert host.slots["pin"].state == "loaded"  # pinned: loaded at start
    for name in ("never", "pin"):
        request(await host.acquire(name), name)()
    await asyncio.sleep(0.05)
    assert host.slots["never"].state == "loaded" and host.slots["pin"].state == "loaded"
    assert not any(line.startswith("stop") for line in log)
    await host.stop()


async def test_lru_idle_model_is_evicted_to_make_room(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {"gib": 4}, "b": {"gib": 4}, "c": {"gib": 4}}, budget_gib=10)
    await host.start_engine()
    await host.acquire("a")
    await asyncio.sleep(0.01)
    await host.acquire("b")  # a is now the least recently used
    await host.acquire("c")
    assert host.slots["a"].state == "unloaded" and "evicted to make room for 'c'" in host.slots["a"].reason
    assert host.slots["b"].state == "loaded" and host.slots["c"].state == "loaded"
    assert log == ["start a", "start b", "stop a", "start c"]
    await host.stop()


async def test_what_does_not_fit_is_refused_with_a_reason_and_the_other_keeps_serving(tmp_path):
    host, log, _ = make_host(tmp_path, {"small": {"gib": 6, "pinned": True}, "big": {"gib": 6}}, budget_gib=10)
    await host.start_engine()
    with pytest.raises(ModelUnavailable) as err:
        await host.acquire("big")
    assert err.value.code == "model_load_failed" and "small" in str(err.value) and "pinned" in str(err.value)
    assert host.slots["big"].state == "failed" and "big" in host.slots["big"].reason
    assert (await host.acquire("small")).engine.info.id == "small"
    assert log == ["start small"]  # nothing was even tried for big
    await host.stop()


async def test_busy_model_is_not_evicted(tmp_path):
    host, _, _ = make_host(tmp_path, {"a": {"gib": 6}, "b": {"gib": 6}}, budget_gib=10)
    await host.start_engine()
    finish = request(await host.acquire("a"))
    with pytest.raises(ModelUnavailable, match="busy"):
        await host.acquire("b")
    finish()
    host.slots["b"].retry_at = 0  # past the back-off
    assert (await host.acquire("b")).engine.info.id == "b" and host.slots["a"].state == "unloaded"
    await host.stop()


async def test_failed_load_backs_off_then_retries(tmp_path):
    clock = Clock()
    host, log, _ = make_host(tmp_path, {"bad": {"fail": "corrupt weights"}, "ok": {}}, clock=clock)
    await host.start_engine()
    with pytest.raises(ModelUnavailable, match="corrupt weights"):
        await host.acquire("bad")
    slot = host.slots["bad"]
    assert slot.state == "failed" and "corrupt weights" in slot.reason and log == ["start bad", "stop bad"]
    with pytest.raises(ModelUnavailable) as err:  # within the back-off: no new attempt
        await host.acquire("bad")
    assert err.value.retry_after and log == ["start bad", "stop bad"]
    assert (await host.acquire("ok")).engine.info.id == "ok"  # the others keep serving
    clock.t += 10
    with pytest.raises(ModelUnavailable):
        await host.acquire("bad")
    assert log.count("start bad") == 2 and slot.failures == 2
    entry = next(m for m in host.capacity().models if m.id == "bad")
    assert entry.state == "failed" and "corrupt weights" in entry.state_reason
    await host.stop()


async def test_load_timeout_is_a_503_but_the_load_goes_on(tmp_path):
    host, _, _ = make_host(tmp_path, {"slow": {"start_s": 0.3}}, load_timeout=0.05)
    await host.start_engine()
    with pytest.raises(ModelUnavailable) as err:
        await host.acquire("slow")
    assert err.value.code == "model_loading"
    await asyncio.sleep(0.4)
    assert host.slots["slow"].state == "loaded"
    await host.stop()


async def test_stop_during_a_load_abandons_it_and_holds_nothing(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {"start_s": 5.0}})
    await host.start_engine()
    waiter = asyncio.create_task(host.acquire("a"))
    for _ in range(500):  # until the engine is starting (a fixed sleep lost that race on a loaded box)
        if log:
            break
        await asyncio.sleep(0.01)
    assert log == ["start a"] and host.slots["a"].state == "loading"
    await host.stop()
    assert host.slots["a"].state == "unloaded" and host.slots["a"].runtime is None
    assert log == ["start a", "stop a"]
    with pytest.raises((ModelUnavailable, asyncio.CancelledError)):
        await waiter


async def test_sleep_capable_engine_sleeps_and_wakes(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {"can_sleep": True, "keep_alive": 0.0}})
    await host.start_engine()
    rt = await host.acquire("a")
    request(rt)()
    await settle()
    assert host.slots["a"].state == "sleeping" and log == ["start a", "sleep a"]
    assert await host.acquire("a") is rt  # woken, not reloaded
    assert log == ["start a", "sleep a", "wake a"] and host.slots["a"].wake_s is not None
    await host.stop()


async def test_admin_unload_and_sleep_without_sleep_mode(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {}})
    await host.start_engine()
    await host.load("a")
    finish = request(host.slots["a"].runtime)
    with pytest.raises(ModelUnavailable) as err:
        await host.unload("a")
    assert err.value.status == 409
    finish()
    slot = await host.sleep("a")  # no sleep mode: a full unload
    assert slot.state == "unloaded" and log == ["start a", "stop a"]
    await host.stop()


async def test_capacity_v2_lists_every_model_with_state_and_keeps_v1_fields(tmp_path):
    host, _, _ = make_host(tmp_path, {"a": {"gib": 2}, "b": {"gib": 3, "pinned": True}})
    await host.start_engine()
    rt = await host.acquire("a")
    finish = request(rt)
    cap = host.capacity(prompt_tokens=512, max_tokens=64)
    assert cap.schema_version == SCHEMA_VERSION == 2
    by = {m.id: m for m in cap.models}
    assert by["a"].state == "loaded" and by["b"].state == "loaded" and by["b"].pinned
    assert by["a"].last_used is not None and by["a"].load_s is not None and by["a"].memory_bytes == 2 << 30
    assert cap.memory_budget_bytes == 10 << 30 and cap.state == "ready"
    assert cap.admission["in_flight"] == 1 and cap.prediction is not None and cap.prediction.would_admit
    finish()
    await host.unload("a")
    by = {m.id: m for m in host.capacity().models}
    assert by["a"].state == "unloaded" and by["a"].max_model_len == 256
    await host.stop()


async def test_drain_refuses_new_loads(tmp_path):
    host, _, _ = make_host(tmp_path, {"a": {}})
    await host.start_engine()
    assert await host.drain(1.0) == 0
    with pytest.raises(ModelUnavailable) as err:
        await host.acquire("a")
    assert err.value.code == "draining"


async def test_a_failed_wake_stops_the_sleeping_engine(tmp_path):
    host, log, engines = make_host(tmp_path, {"a": {"can_sleep": True, "keep_alive": 0.0}})
    await host.start_engine()
    request(await host.acquire("a"))()
    await settle()
    assert host.slots["a"].state == "sleeping"

    async def broken_wake() -> None:
        raise RuntimeError("wake failed")

    engines["a"].wake_up = broken_wake
    with pytest.raises(ModelUnavailable, match="wake failed"):
        await host.acquire("a")
    assert host.slots["a"].state == "failed" and host.slots["a"].runtime is None and log[-1] == "stop a"


async def test_draining_abandons_a_load_and_its_waiters_get_503(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {"start_s": 5.0}})
    await host.start_engine()
    waiters = [asyncio.create_task(host.acquire("a")) for _ in range(2)]
    await asyncio.sleep(0.02)
    await host.drain(1.0)
    for w in waiters:
        with pytest.raises(ModelUnavailable) as err:
            await w
        assert err.value.code == "draining"
    assert host.slots["a"].state == "unloaded" and host.slots["a"].runtime is None
    assert log == ["start a", "stop a"]
    await host.stop()


async def test_stop_also_stops_a_sleeping_engine(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {"can_sleep": True, "keep_alive": 0.0}})
    await host.start_engine()
    request(await host.acquire("a"))()
    await settle()
    assert host.slots["a"].state == "sleeping"
    await host.stop()
    assert log == ["start a", "sleep a", "stop a"] and host.slots["a"].runtime is None


async def test_a_request_arriving_as_keep_alive_fires_is_never_cut_off(tmp_path):
    """The idle release marks the model released in the same step it decides; a request that
    acquires afterwards loads it again instead of running on an engine being stopped."""
    host, log, engines = make_host(tmp_path, {"a": {"keep_alive": 0.0}})
    await host.start_engine()
    rt = await host.acquire("a")
    request(rt)()  # schedules the idle check
    for _ in range(10):
        await asyncio.sleep(0)
        if host.slots["a"].state != "loaded":
            break
    # marked released before its engine is stopped (that happens in a task, later)
    assert host.slots["a"].state == "unloaded" and "stop a" not in log
    rt2 = await host.acquire("a")
    assert rt2 is not rt and host.slots["a"].state == "loaded" and engines["a"].running
    await host.stop()


async def test_requests_waiting_for_a_load_count_as_waiting(tmp_path):
    host, _, _ = make_host(tmp_path, {"a": {"start_s": 0.2}})
    await host.start_engine()
    waiters = [asyncio.create_task(host.acquire("a")) for _ in range(3)]
    await asyncio.sleep(0.05)
    cap = host.capacity()
    entry = next(m for m in cap.models if m.id == "a")
    assert entry.state == "loading" and entry.waiting == 3
    assert cap.load.waiting == 3 and cap.admission["waiting_for_load"] == 3 and not cap.idle
    await asyncio.gather(*waiters)
    assert host.capacity().load.waiting == 0
    await host.stop()


async def test_keep_alive_0_still_unloads_after_a_request_that_failed_before_it_began(tmp_path):
    """The load's waiter is still counted when the first idle check runs; a request that then
    fails validation never begins (so never ends): a later check releases the model."""
    host, log, _ = make_host(tmp_path, {"a": {"keep_alive": 0.0}})
    await host.start_engine()
    await host.acquire("a")  # and the request is refused before Generation
    for _ in range(30):
        await asyncio.sleep(0.05)
        if host.slots["a"].state == "unloaded":
            break
    assert host.slots["a"].state == "unloaded" and log == ["start a", "stop a"]
    await host.stop()


async def test_load_waiters_count_in_their_priority_class_and_in_the_prediction(tmp_path):
    host, _, _ = make_host(tmp_path, {"a": {"start_s": 0.3}, "b": {}})  # 4 sequence slots
    await host.start_engine()
    b = await host.acquire("b")  # loaded and idle: its prediction is the node's
    b.perf.record(RequestTiming(finished_at=time.monotonic(), ttft_s=0.1, e2e_s=1.0, prompt_tokens=100,
                                completion_tokens=10))  # a recent mean E2EL of 1 s
    quiet = host.capacity(prompt_tokens=100, priority=0).prediction
    assert quiet.predicted_queue_wait_ms == 0
    waiters = [asyncio.create_task(host.acquire("a", p)) for p in (-5, 0, 0, 0, 0, 0, 7)]
    await asyncio.sleep(0.05)
    cap = host.capacity(prompt_tokens=100, priority=0)
    assert [(q.priority, q.waiting, q.waiting_prompt_tokens) for q in cap.load.queue_by_priority] == [
        (-5, 1, 0), (0, 5, 0), (7, 1, 0)]
    assert cap.load.waiting == 7
    # 6 run no later than a priority-0 request: with 4 slots, 3 finish first (3/4 of a 1 s E2EL)
    assert cap.prediction.predicted_queue_wait_ms == pytest.approx(750.0)
    assert cap.prediction.predicted_ttft_ms > quiet.predicted_ttft_ms + 700
    urgent = host.capacity(prompt_tokens=100, priority=-10).prediction  # nothing waits ahead of it
    assert urgent.predicted_queue_wait_ms == 0
    await asyncio.gather(*waiters)
    cap = host.capacity()
    assert cap.load.queue_by_priority == [] and host.slots["a"].waiters_by_priority == {}
    await host.stop()


async def test_a_cancelled_waiter_leaves_its_priority_class(tmp_path):
    host, _, _ = make_host(tmp_path, {"a": {"start_s": 0.3}})
    await host.start_engine()
    w = asyncio.create_task(host.acquire("a", 3))
    await asyncio.sleep(0.05)
    assert [(q.priority, q.waiting) for q in host.capacity().load.queue_by_priority] == [(3, 1)]
    w.cancel()
    await asyncio.sleep(0.01)
    assert host.capacity().load.queue_by_priority == [] and host.slots["a"].waiters == 0
    await host.stop()


async def test_a_request_keep_alive_governs_its_model_until_the_next_request(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {"keep_alive": None}})  # the model's own: never
    await host.start_engine()
    rt = await host.acquire("a", keep_alive=0.0)  # Ollama: keep_alive 0 = release after this request
    assert host.slots["a"].keep_alive_s == 0.0
    request(rt)()  # begins and ends: the model is idle
    for _ in range(40):
        await asyncio.sleep(0.05)
        if host.slots["a"].state == "unloaded":
            break
    assert host.slots["a"].state == "unloaded" and log == ["start a", "stop a"]
    rt = await host.acquire("a")  # no keep_alive: the model's own (never) again
    assert host.slots["a"].keep_alive_s is None
    request(rt)()
    await asyncio.sleep(0.3)
    assert host.slots["a"].state == "loaded" and host.capacity().models[0].keep_alive_s is None
    await host.stop()


async def test_a_pinned_model_ignores_a_request_keep_alive_of_zero(tmp_path):
    host, log, _ = make_host(tmp_path, {"a": {"pinned": True}})
    await host.start_engine()
    rt = await host.acquire("a", keep_alive=0.0)
    request(rt)()
    await asyncio.sleep(0.3)
    assert host.slots["a"].state == "loaded" and log == ["start a"]
    await host.stop()
