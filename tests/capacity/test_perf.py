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
