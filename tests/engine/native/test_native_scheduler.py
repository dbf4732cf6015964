"""Scheduler with made-up token ids: budgets, chunked prefill, decode-first, preemption."""

from server.engine.native.block_manager import BlockManager
from server.engine.native.scheduler import Scheduler, SchedulerConfig
from server.engine.native.sequence import Sequence, SequenceStatus


def make(num_blocks=64, block_size=4, budget=16, max_seqs=8, chunked=True, prefix=True):
    bm = BlockManager(num_blocks, block_size, prefix)
    return Scheduler(SchedulerConfig(max_seqs, budget, 4096, chunked), bm)


def run_step(s, next_token=7):
    """Schedule, pretend the model ran, append a token where one was produced."""
    batch = s.schedule()
    produced = s.advance(batch)
    for seq, p in zip(batch.seqs, produced):
        if p:
            seq.append_token(next_token)
    return batch


def test_prompt_is_chunked_under_the_budget():
    s = make(budget=16)
    a = Sequence("a", list(range(40)), 4)
    s.add(a)
    sizes = [run_step(s).num_new_tokens for _ in range(3)]
    assert sizes == [[16], [16], [8]]
    assert a.num_completion_tokens == 1  # only the last chunk samples


def test_no_chunking_waits_for_a_budget_that_fits():
    s = make(budget=16, chunked=False)
    s.add(Sequence("a", list(range(10)), 4))
    s.add(Sequence("b", list(range(100, 110)), 4))
    batch = run_step(s)
    assert [q.seq_id for q in batch.seqs] == ["a"]  # b does not fit in the leftover 6


def test_decodes_come_first_and_are_not_starved_by_prefill():
    s = make(budget=16)
    a = Sequence("a", list(range(5)), 10)
    s.add(a)
    run_step(s)
    s.add(Sequence("b", list(range(100, 140)), 4))
    batch = run_step(s)
    assert batch.seqs[0] is a and batch.num_new_tokens[0] == 1
    assert batch.num_new_tokens[1] == 15  # b gets the rest of the budget


def test_max_num_seqs_caps_running():
    s = make(max_seqs=2)
    for i in range(4):
        s.add(Sequence(str(i), [i, i + 1], 4))
    batch = run_step(s)
    assert len(batch.seqs) == 2 and len(s.waiting) == 2


def test_preemption_by_recompute_when_kv_runs_out():
    s = make(num_blocks=4, block_size=4, budget=64)
    a = Sequence("a", list(range(8)), 20)
    b = Sequence("b", list(range(100, 108)), 20)
    s.add(a)
    s.add(b)
    run_step(s)  # both prefilled: 4 blocks used, each holds 8 tokens + 1 sampled
    batch = run_step(s)  # each needs a 3rd block: b (newest) is preempted
    assert b in batch.preempted and b.status is SequenceStatus.WAITING
    assert b.num_computed_tokens == 0 and b.block_table == []
    assert s.waiting[0] is b
    assert batch.seqs == [a]


def test_finish_frees_blocks_and_is_idempotent():
    s = make()
    a = Sequence("a", list(range(9)), 4)
    s.add(a)
    run_step(s)
    used = s.bm.num_blocks - s.bm.num_free_blocks
    assert used == 3
    s.finish(a)
    s.finish(a)
    assert s.bm.num_free_blocks == s.bm.num_blocks and not s.has_work()


def test_prefix_cache_skips_computed_tokens():
    s = make(budget=64)
    a = Sequence("a", list(range(20)), 4)
    s.add(a)
    run_step(s)
    b = Sequence("b", list(range(20)), 4)
    s.add(b)
    batch = run_step(s)
    i = batch.seqs.index(b)
    assert b.num_cached_tokens == 16 and batch.num_new_tokens[i] == 4


def test_scheduler_modules_import_no_torch():
    import subprocess
    import sys
    code = ("import sys; import server.engine.native.scheduler, server.engine.native.block_manager; "
            "print('torch' in sys.modules, 'fastapi' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
