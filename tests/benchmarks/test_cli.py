"""`edgefleet bench` CLI: clear errors, --compare interleaving, outputs, report, fleet view."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.cli import bench
from tests.benchmarks.scripted_server import Script, ScriptedServer, ThreadedServer, chunk, usage
from tests.nodeproc import free_port

OK = Script([(0.01, chunk("a")), (0.01, chunk("b")), (0, usage(3, 2)), (0, "data: [DONE]")])
EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))


def prompts(tmp_path: Path, n: int = 3) -> Path:
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(n)))
    return p


def invoke(*args: str) -> object:
    return CliRunner().invoke(bench, list(args), catch_exceptions=False)


def common(tmp_path: Path, n: int = 3) -> list[str]:
    return ["--model", "scripted", "--dataset-name", "custom", "--dataset-path", str(prompts(tmp_path, n)),
            "--custom-output-len", "2", "--num-prompts", str(n), "--disable-tqdm"]


def test_endpoint_down_is_a_clear_error_not_a_traceback(tmp_path):
    port = free_port()
    out = subprocess.run([EDGEFLEET, "bench", "serve", "--base-url", f"http://127.0.0.1:{port}/v1",
                          *common(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert f"cannot connect to http://127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_wrong_key_and_unknown_model(tmp_path):
    with ThreadedServer(ScriptedServer({"Hello": OK}, api_key="right-key", default="ok")) as srv:
        srv.scripts["ok"] = OK
        r = invoke("serve", "--base-url", srv.url, "--api-key", "wrong-key", *common(tmp_path))
        assert r.exit_code == 1 and "rejected the API key" in r.output and "check --api-key" in r.output
        r = invoke("serve", "--base-url", srv.url, *common(tmp_path))
        assert r.exit_code == 1 and "set --api-key or OPENAI_API_KEY" in r.output
        args = common(tmp_path)
        args[1] = "no-such-model"
        r = invoke("serve", "--base-url", srv.url, "--api-key", "right-key", *args)
        assert r.exit_code == 1 and "'no-such-model' is unknown" in r.output and "serves: scripted" in r.output
        r = invoke("serve", "--base-url", srv.url, "--api-key", "right-key", *common(tmp_path))
        assert r.exit_code == 0, r.output
        assert "Successful requests:                     3" in r.output


def test_random_dataset_without_tokenizer_says_what_to_do(tmp_path):
    with ThreadedServer(ScriptedServer({"Hello": OK})) as srv:
        r = invoke("serve", "--base-url", srv.url, "--model", "scripted", "--num-prompts", "2")
        assert r.exit_code == 1 and "--tokenizer" in r.output


def test_compare_interleaves_and_writes_outputs(tmp_path):
    a_srv, b_srv = ScriptedServer({"Hello": OK}, default="ok"), ScriptedServer({"Hello": OK}, default="ok")
    a_srv.scripts["ok"] = b_srv.scripts["ok"] = OK
    out = tmp_path / "res"
    with ThreadedServer(a_srv) as a, ThreadedServer(b_srv) as b:
        r = invoke("serve", "--compare", a.url, f"{b.url}/v1,label=second", "--rounds", "2", "--max-concurrency", "1",
                   "--goodput", "ttft:5000", "tpot:5000", "--api-key", "sekrit-123", "--save-result",
                   "--result-dir", str(out), *common(tmp_path))
        assert r.exit_code == 0, r.output
    # A A A | B B B | A A A | B B B (after each side's pre-flight probe)
    a_times = [t[0] for _, t in a_srv.sent[1:]]
    b_times = [t[0] for _, t in b_srv.sent[1:]]
    assert len(a_times) == len(b_times) == 6
    # A B, then B A: each endpoint goes first in alternate rounds
    assert max(a_times[:3]) < min(b_times[:3]) and max(b_times[:3]) < min(b_times[3:])
    assert max(b_times[3:]) < min(a_times[3:])
    files = sorted(out.glob("*.json"))
    assert len(files) == 2
    res = {json.loads(f.read_text())["label"]: json.loads(f.read_text()) for f in files}
    second = res["second"]
    assert second["completed"] == 6 and second["num_rounds"] == 2
    assert second["request_goodput"] > 0
    assert len(second["ratios_to_first"]["per_round"]["mean_ttft_ms"]) == 2
    assert "ttfts" not in second  # no --save-detailed
    for key in ("date", "backend", "label", "model_id", "num_prompts", "request_rate", "burstiness",
                "max_concurrency", "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
                "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p50_tpot_ms", "p90_itl_ms", "p95_e2el_ms",
                "p99_ttft_ms"):
        assert key in second, key
    md = next(out.glob("*-compare.md")).read_text()
    assert "Ratios to the first endpoint" in md and "| second |" in md
    assert "sekrit-123" not in md and "***" in md
    assert all("sekrit-123" not in f.read_text() for f in files)
    assert list(out.glob("*-ttft-cdf.png"))


def test_report_merges_ours_and_vllm_files(tmp_path):
    with ThreadedServer(ScriptedServer({"Hello": OK}, default="ok")) as srv:
        srv.scripts["ok"] = OK
        for c in ("1", "2"):
            r = invoke("serve", "--base-url", srv.url, "--max-concurrency", c, "--label", "ours", "--save-result",
                       "--save-detailed", "--result-dir", str(tmp_path / "res"), *common(tmp_path))
            assert r.exit_code == 0, r.output
    detailed = json.loads(next((tmp_path / "res").glob("*concurrency1*.json")).read_text())
    assert len(detailed["ttfts"]) == 3 and detailed["output_lens"] == [2, 2, 2]
    # A file as `vllm bench serve --save-result` writes it: only its own keys.
    vllm = {k: v for k, v in detailed.items() if k in (
        "date", "backend", "label", "model_id", "num_prompts", "request_rate", "burstiness", "max_concurrency",
        "duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
        "request_goodput", "output_throughput", "total_token_throughput") or k.endswith("_ms")}
    vllm["label"] = "vllm-bench"
    (tmp_path / "res" / "vllm.json").write_text(json.dumps(vllm))
    r = invoke("report", *map(str, sorted((tmp_path / "res").glob("*.json"))), "--output-dir", str(tmp_path / "rep"))
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("| ours |") == 2 and "| vllm-bench |" in md
    assert (tmp_path / "rep" / "report-sweep.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "report-ttft-cdf.png").exists()


def test_fleet_reports_node_share_and_capacity(tmp_path):
    n1 = Script([(0.01, chunk("a")), (0, usage(3, 1)), (0, "data: [DONE]")], node="node-1")
    n2 = Script([(0.03, chunk("a")), (0, usage(3, 1)), (0, "data: [DONE]")], node="node-2")
    cap = {"schema_version": 1, "identity": {"name": "router-x", "engine": "sim", "version": "t"}, "models": []}
    srv = ScriptedServer({"Hello": n1, "q0": n1, "q1": n2, "q2": n1, "q3": n1}, capacity=cap)
    with ThreadedServer(srv):
        r = invoke("fleet", "--base-url", srv.url, "--save-result", "--result-dir", str(tmp_path / "res"),
                   *common(tmp_path, 4))
    assert r.exit_code == 0, r.output
    assert "node-1" in r.output and " 75.0%" in r.output and " 25.0%" in r.output and "TOTAL" in r.output
    res = json.loads(next((tmp_path / "res").glob("*.json")).read_text())
    assert res["nodes"]["node-1"]["requests"] == 3 and res["nodes"]["node-2"]["share"] == 0.25
    assert res["nodes"]["node-2"]["mean_ttft_ms"] > res["nodes"]["node-1"]["mean_ttft_ms"]
    assert res["context"] == {"target": "edgefleet", "capacity": cap}
    md = next((tmp_path / "res").glob("*.md")).read_text()
    assert "## Per node" in md and "edgefleet node router-x" in md


@pytest.mark.parametrize("argv", [["--request-rate", "5", "--ramp-up-strategy", "linear"],
                                  ["--max-concurrency", "0"], ["--extra-body", "[1]"]])
def test_bad_flags_are_usage_errors(tmp_path, argv):
    with ThreadedServer(ScriptedServer({"Hello": OK})) as srv:
        r = invoke("serve", "--base-url", srv.url, *common(tmp_path), *argv)
    assert r.exit_code == 1 and "Error" in r.output
