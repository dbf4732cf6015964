"""Decode graphs' static-buffer path (bucketed batch sizes, padded block tables, a scratch
KV block for padding rows) produces what the plain path does. CUDA capture itself needs a
GPU (benchmarks/kernels/gpu_check.py runs this file there); on CPU the same path runs with
``decode_graphs=eager``: identical inputs, buffers and padding, just not captured."""

from __future__ import annotations

import pytest
import torch

from server.engine.base import SamplingOptions
from server.engine.native.graphs import bucket_sizes
from server.engine.native.setup import decode_graph_mode

from .conftest import greedy, make_core, run_all


def tokens(out) -> dict[str, list[int]]:
    return {rid: [t for d in ds for t in d.token_ids] for rid, ds in out.items()}


def graph_mode() -> str:
    return "on" if torch.cuda.is_available() else "eager"


@pytest.mark.parametrize("stagger", [False, True])
def test_graphs_match_plain_decode_as_the_batch_grows_and_shrinks(llama_dir, stagger):
    """Requests of different lengths finish at different steps, so the batch moves down
    through the buckets (5 -> bucket 8, 3 -> bucket 4, ...), and with staggered arrivals
    freed blocks are reused while stale rows sit in the static buffers."""
    prompts = [list(range(7, 7 + n)) for n in (3, 21, 40, 9, 5, 17, 2)]
    samplings = [greedy(m) for m in (14, 3, 9, 20, 6, 11, 16)]
    samplings[3] = SamplingOptions(max_tokens=20, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)
    plain = tokens(run_all(make_core(llama_dir, max_num_seqs=8, decode_graphs="off"), prompts, samplings,
                                stagger=stagger))
    core = make_core(llama_dir, max_num_seqs=8, decode_graphs=graph_mode())
    graphed = tokens(run_all(core, prompts, samplings, stagger=stagger))
    assert graphed == plain
    assert core.runner.graphs.replays > 10


def test_graphs_with_prefix_caching_and_preemption(llama_dir):
    """A tight KV cache forces preemption by recompute; shared prefixes hit the cache."""
    base = list(range(40, 72))
    prompts = [base + [i, i + 1] for i in range(4)]
    # 14 blocks of 8 tokens cannot hold four sequences of ~60 tokens: forces preemption.
    kw = dict(max_num_seqs=4, block_size=8, kv_cache_gb=14 * 2 * 2 * 8 * 2 * 32 * 4 / (1 << 30),
              max_num_batched_tokens=64, max_model_len=96)
    plain = tokens(run_all(make_core(llama_dir, decode_graphs="off", **kw), prompts, greedy(24)))
    core = make_core(llama_dir, decode_graphs=graph_mode(), **kw)
    assert core.config.num_blocks == 14  # the scratch block comes on top
    out = run_all(core, prompts, greedy(24))
    assert tokens(out) == plain
    assert core.scheduler.num_preemptions > 0
    assert any(d.cached_tokens for ds in out.values() for d in ds)  # the shared prefix was reused
    assert core.runner.graphs.replays > 0


def test_bucket_sizes_cover_every_batch():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(20) == [1, 2, 4, 8, 12, 16, 20]
    for n in range(1, 300):
        assert bucket_sizes(n)[-1] == n


def test_decode_graph_option():
    cpu = torch.device("cpu")
    assert decode_graph_mode("auto", cpu) is None  # CPU: nothing to capture
    assert decode_graph_mode("off", cpu) is None and decode_graph_mode(False, cpu) is None
    assert decode_graph_mode("eager", cpu) == "eager"
    with pytest.raises(ValueError, match="CUDA device with Triton"):
        decode_graph_mode("on", cpu)
    with pytest.raises(ValueError, match="auto, on, off or eager"):
        decode_graph_mode("sometimes", cpu)


def test_graphs_need_the_scratch_block(llama_dir):
    core = make_core(llama_dir, decode_graphs="off")
    with pytest.raises(ValueError, match="scratch_block"):
        core.runner.enable_decode_graphs(8, 512, replay="eager")


def test_a_failed_capture_under_auto_decodes_eagerly(llama_dir, monkeypatch, caplog):
    """``auto`` must never keep a node from starting: a capture error becomes a warning and
    the engine decodes without graphs; an explicit setting still fails loudly."""
    from server.engine.native import model_runner, setup

    def broken(self, *a, **kw):
        raise RuntimeError("capture failed on this driver")

    monkeypatch.setattr(setup, "decode_graph_mode", lambda value, device: "eager")  # as if on a GPU
    monkeypatch.setattr(model_runner.ModelRunner, "enable_decode_graphs", broken)
    core = make_core(llama_dir)  # decode_graphs defaults to auto
    assert core.runner.graphs is None
    assert "decode graph capture failed" in caplog.text
    assert tokens(run_all(core, [[5, 6, 7]], greedy(4)))["r0"]  # and it still generates
    with pytest.raises(RuntimeError, match="capture failed"):
        make_core(llama_dir, decode_graphs="eager")
