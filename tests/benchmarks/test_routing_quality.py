"""The agent-session simulation behind benchmarks/routing_quality.py --workload agent (small, fast)."""

import argparse

from benchmarks import agent_routing as ar
from benchmarks.routing_quality import agent_goals, agent_markdown, agent_sweep


def test_every_policy_completes_every_step_and_cache_routing_hits_more():
    results = {}
    for policy in ar.AGENT_POLICIES:
        chains = ar.make_chains(6, 3, rate=2.0, seed=1)
        results[policy] = r = ar.run_agent(ar.FLEET, policy, chains, seed=1)
        assert r["steps"] == 18 and r["chains"] == 6, policy
        assert 0.0 <= r["hit_rate"] < 1.0 and r["ttft_p99_s"] >= r["ttft_p50_s"] > 0
    # Round robin scatters each chain over four caches; the cost model keeps it where it is.
    assert results["nearest_idle"]["hit_rate"] > results["round_robin"]["hit_rate"] + 0.1
    assert results["nearest_idle"]["chain_p99_s"] < results["round_robin"]["chain_p99_s"]
    # The router's index was corrected by the reported cached tokens it saw.
    assert results["nearest_idle"]["reported_cached_tokens"] > 0


def test_sim_node_cache_and_queue():
    node = ar.SimNode(ar.Shape("n", 1.0, 1000, 10, 0, 1, 64 * 4))
    h = [1, 2, 3, 4, 5, 6]
    node.touch(h)
    assert len(node.cache) == 4 and node.match(h) == 4  # the budget keeps the prefix, drops the tail
    node.running = [5.0]  # the one slot is busy until t=5
    assert node.wait_s(0.0) == 5.0


def test_sweep_and_report_render():
    args = argparse.Namespace(fleet="hetero", chains=3, steps=2, seeds=[0], rates=[1.0], requests=10, independent_rates=[2.0],
                              agent_policies=list(ar.AGENT_POLICIES))
    res = agent_sweep(args)
    row = res["rates"][1.0]
    assert set(row) == {*ar.AGENT_POLICIES, "single_node"}
    goals = agent_goals(row)
    assert goals["vs_oracle"] > 0 and goals["hit_vs_single"] > 0
    md = agent_markdown(res)
    assert "| nearest_idle |" in md and "x oracle" in md and "Independent requests" in md
