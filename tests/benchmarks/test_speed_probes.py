"""The pieces the GGUF speed benchmark and the decode profile are built from: the CPU-steal
probe, the profile's grouping of operators, and the llama.cpp driver's arithmetic (run as the
subprocess it is, against a stand-in ``llama_cpp`` module: the real one is never a project
dependency; docs/native-engine.md has the real runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.native_engine import CpuSteal
from benchmarks.native_profile import group_of

DRIVER = Path(__file__).parents[2] / "benchmarks" / "llamacpp_driver.py"

FAKE_LLAMA = '''
import time

class Llama:
    def __init__(self, model_path, **kw):
        assert kw["n_threads"] == kw["n_threads_batch"]

    def reset(self):
        pass

    def create_completion(self, prompt, max_tokens, temperature, logit_bias):
        assert temperature == 0.0 and all(v < -1e8 for v in logit_bias.values())
        time.sleep(0.05 + 0.01 * (max_tokens - 1))  # 50 ms to the first token, then 10 ms each
        n = max_tokens - 1 if len(prompt) == 3 else max_tokens  # a 3-token prompt "stops early"
        return {"usage": {"completion_tokens": n}}

    def eval(self, tokens):
        time.sleep(0.05 if len(tokens) > 1 else 0.01)  # the same costs, one forward pass at a time

    def n_vocab(self):
        return 8

    @property
    def _ctx(self):
        import ctypes
        buf = (ctypes.c_float * 8)(*range(8))
        self._keep = buf  # the caller reads it through a pointer, as from llama.cpp
        return type("Ctx", (), {"get_logits": lambda _: ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))})()
'''


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat on this OS")
def test_cpu_steal_is_a_share_of_the_interval():
    probe = CpuSteal()
    sum(i * i for i in range(200_000))  # some CPU time passes
    pct = probe.pct()
    assert pct is not None and 0.0 <= pct <= 100.0


def test_cpu_steal_is_none_where_proc_stat_cannot_be_read(monkeypatch):
    probe = CpuSteal()
    monkeypatch.setattr(CpuSteal, "_read", staticmethod(lambda: None))
    assert probe.pct() is None


@pytest.mark.parametrize(("op", "group"), [
    ("aten::_weight_int4pack_mm_for_cpu", "int4 GEMV"),
    ("aten::_weight_int8pack_mm", "int8 GEMV"),
    ("mkldnn::_linear_pointwise", "dense GEMM"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::index_select", "attention"),
    ("aten::mul", "other ops"),
    ("aten::rsqrt", "other ops"),
])
def test_profile_groups_each_operator_once(op, group):
    assert group_of(op) == group


def _driver(tmp_path: Path, prompts: list[list[int]]) -> subprocess.CompletedProcess:
    (tmp_path / "llama_cpp.py").write_text(FAKE_LLAMA)
    job = {"model": "m.gguf", "prompts": prompts, "output_len": 11, "threads": 2, "ban": [2]}
    return subprocess.run([sys.executable, str(DRIVER)], input=json.dumps(job), capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})


def test_llamacpp_driver_reports_ttft_and_tpot_per_prompt(tmp_path):
    r = _driver(tmp_path, [[5, 6, 7, 8], [9, 10, 11, 12]])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2
    for row in (x[kind] for x in rows for kind in ("api", "eval")):
        assert 0.045 <= row["ttft_s"] < 0.5
        assert 8.0 <= row["tpot_ms"] < 60.0  # (wall(11) - wall(1)) / 10, the fake's 10 ms a token
        assert row["output_tok_s"] == pytest.approx(11 / row["wall_s"])


def test_llamacpp_driver_fails_loudly_when_a_run_stops_short(tmp_path):
    r = _driver(tmp_path, [[5, 6, 7]])
    assert r.returncode != 0
    assert "llama.cpp produced 1 tokens, wanted 2" in r.stderr  # already in the warm-up run
