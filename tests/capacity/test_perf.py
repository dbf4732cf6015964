from server.capacity.perf import PerfWindow, RequestTiming, percentile, predict_ttft
from server.config import NodeSettings
from server.runtime import stable_node_id


def test_percentile_linear_interpolation():
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0], 99) == 10.0
    assert abs(percentile(list(range(1, 101)), 99) - 99.01) < 1e-9


def test_window_summary_and_expiry():
    w = PerfWindow(window_s=10)
    w.record(RequestTiming(finished_at=100.0, ttft_s=0.1, e2e_s=1.1, prompt_tokens=100, completion_tokens=11))
    w.record(RequestTiming(finished_at=105.0, ttft_s=0.3, e2e_s=0.3, prompt_tokens=300, completion_tokens=1))
    s = w.summary(now=106.0)
    assert s["requests"] == 2 and s["ttft_p50_ms"] == 200.0
    assert s["tpot_p50_ms"] == 100.0  # (1.1 - 0.1) / 10; the 1-token request has no TPOT
    assert s["prefill_tokens_per_s"] == 1000.0
    assert w.summary(now=111.0)["requests"] == 1


def test_prediction_grows_with_queue_and_prompt():
    summary = {"prefill_tokens_per_s": 1000.0, "mean_e2e_s": 2.0, "tpot_p50_ms": 10.0}
    idle = predict_ttft(prompt_tokens=500, waiting_prompt_tokens=0, in_flight=0, max_num_seqs=4, summary=summary)
    assert abs(idle.predicted_ttft_s - 0.5) < 1e-9 and idle.queue_wait_s == 0
    full = predict_ttft(prompt_tokens=500, waiting_prompt_tokens=1000, in_flight=7, max_num_seqs=4, summary=summary)
    assert full.queue_wait_s == 2.0 and full.predicted_ttft_s > idle.predicted_ttft_s + 2.0
    prior = predict_ttft(prompt_tokens=10, waiting_prompt_tokens=0, in_flight=0, max_num_seqs=4, summary={})
    assert "prior" in prior.basis


def test_node_id_is_stable_across_restarts(tmp_path):
    s = NodeSettings(state_dir=tmp_path)
    first = stable_node_id(s)
    assert stable_node_id(s) == first and (tmp_path / "node_id").read_text().strip() == first
    assert stable_node_id(NodeSettings(state_dir=tmp_path / "other")) != first
    assert stable_node_id(NodeSettings(state_dir=tmp_path, port=8001)) != first  # a second node, same box


def test_queued_requests_count_their_slot_time_not_their_wait():
    w = PerfWindow(window_s=60)
    # found a free slot: TTFT is prefill (100 tokens in 0.1 s), E2E 1.0 s
    w.record(RequestTiming(finished_at=10.0, ttft_s=0.1, e2e_s=1.0, prompt_tokens=100, completion_tokens=10))
    # waited 2 s for a slot: TTFT 2.1 s, E2E 3.0 s; it held its slot for 1.0 s too
    w.record(RequestTiming(finished_at=11.0, ttft_s=2.1, e2e_s=3.0, prompt_tokens=100, completion_tokens=10,
                           queued=True))
    s = w.summary(now=12.0)
    assert s["prefill_tokens_per_s"] == 1000.0  # from the direct request only (not 200 / 2.2 s)
    assert abs(s["mean_busy_s"] - 1.0) < 1e-9 and s["mean_e2e_s"] == 2.0
    p = predict_ttft(prompt_tokens=100, waiting_prompt_tokens=0, in_flight=5, max_num_seqs=4, summary=s)
    assert abs(p.queue_wait_s - 0.5) < 1e-9  # 2 ahead / 4 slots x 1.0 s held, not x 2.0 s E2E


def test_runtime_marks_a_request_that_began_behind_a_full_batch():
    from server.runtime import NodeRuntime
    from tests.fakes import ScriptedEngine

    rt = NodeRuntime(NodeSettings(engine="sim"), ScriptedEngine(tokens=2, step_s=0.0, max_num_seqs=1))
    first = rt.begin("a", ["a-0"], 10, 0.0)
    second = rt.begin("b", ["b-0"], 10, 0.0)
    assert not first.queued and second.queued


def test_a_node_busy_past_the_window_keeps_its_last_direct_prefill_rate():
    w = PerfWindow(window_s=10)
    w.record(RequestTiming(finished_at=1.0, ttft_s=0.1, e2e_s=1.0, prompt_tokens=100, completion_tokens=10))
    assert w.summary(now=2.0)["prefill_tokens_per_s"] == 1000.0
    # 20 s later every request in the window queued (TTFT 2 s of waiting): the rate stays
    w.record(RequestTiming(finished_at=20.0, ttft_s=2.1, e2e_s=3.0, prompt_tokens=100, completion_tokens=10,
                           queued=True))
    s = w.summary(now=21.0)
    assert s["requests"] == 1 and s["prefill_tokens_per_s"] == 1000.0 and abs(s["mean_busy_s"] - 1.0) < 1e-9
    assert w.summary(now=60.0)["prefill_tokens_per_s"] is None  # nothing recent at all
    fresh = PerfWindow(window_s=10)  # never saw a direct request: every request's rate, as before
    fresh.record(RequestTiming(finished_at=1.0, ttft_s=2.0, e2e_s=3.0, prompt_tokens=100, completion_tokens=10,
                               queued=True))
    assert fresh.summary(now=2.0)["prefill_tokens_per_s"] == 50.0
