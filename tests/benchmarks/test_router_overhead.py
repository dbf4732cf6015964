"""The router-overhead benchmark runs end to end at toy size and reports every target, so it
cannot rot between the runs quoted in docs/router.md. Its numbers are not checked here:
speed is measured in benchmarks/, never in timed tests."""

from __future__ import annotations

import json
import subprocess
import sys


def test_router_overhead_reports_router_and_floor(tmp_path):
    out = tmp_path / "overhead"
    subprocess.run([sys.executable, "-m", "benchmarks.router_overhead", "--requests", "4", "--concurrent-requests",
                    "8", "--concurrency", "4", "--rounds", "1", "--out", str(out)], check=True, timeout=300,
                   capture_output=True)
    res = json.loads(out.with_suffix(".json").read_text())
    assert set(res["sequential"]) == {"direct", "edgefleet-router", "passthrough-floor"}
    for label, d in res["sequential"].items():
        assert d["failed"] == 0 and d["p50_e2el_ms"] > 0, (label, d)
    assert res["sequential"]["edgefleet-router"]["median_pairwise_added_e2el_ms"] is not None
    assert all(v["requests_per_s"] > 0 for v in res["concurrent"].values())
    assert "passthrough-floor" in out.with_suffix(".md").read_text()
