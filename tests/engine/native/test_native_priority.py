"""Native scheduler priority (made-up token ids, no model): admission by (priority, arrival),
preemption victim = lowest priority then newest, KV events from the block manager."""

from server.engine.kv_events import KvEventLog, block_hashes
from server.engine.native.block_manager import BlockManager
from server.engine.native.scheduler import Scheduler, SchedulerConfig
from server.engine.native.sequence import Sequence, SequenceStatus


def make(num_blocks=64, block_size=4, budget=64, max_seqs=8, events=None):
    return Scheduler(SchedulerConfig(max_seqs, budget, 4096, True), BlockManager(num_blocks, block_size, True, events))


def run_step(s, next_token=7):
    batch = s.schedule()
    for seq, produced in zip(batch.seqs, s.advance(batch)):
        if produced:
            seq.append_token(next_token)
    return batch


def test_waiting_sequences_are_admitted_by_priority_then_arrival():
    s = make(max_seqs=1)
    s.add(Sequence("batch-a", [1, 2, 3], 4, priority=10))
    s.add(Sequence("batch-b", [4, 5, 6], 4, priority=10))
    s.add(Sequence("urgent", [7, 8, 9], 4, priority=-5))
    s.add(Sequence("normal", [10, 11], 4))
    admitted = []
    for _ in range(4):
        batch = run_step(s)
        admitted.append(batch.seqs[0].seq_id)
        s.finish(batch.seqs[0])
    assert admitted == ["urgent", "normal", "batch-a", "batch-b"]


def test_the_best_waiting_sequence_that_does_not_fit_is_not_overtaken():
    s = make(num_blocks=4, block_size=4, budget=64)
    s.add(Sequence("running", list(range(8)), 8))
    run_step(s)  # 2 of 4 blocks (8 prompt tokens + 1 sampled: 3 blocks on the next step)
    s.add(Sequence("small-early", [200, 201], 4, priority=5))  # would fit in the free block
    s.add(Sequence("big-urgent", list(range(100, 112)), 4, priority=-1))  # needs 3 blocks
    batch = run_step(s)
    assert [q.seq_id for q in batch.seqs] == ["running"]
    assert [q.seq_id for q in s.waiting] == ["big-urgent", "small-early"]


def test_preemption_evicts_the_lowest_priority_not_the_newest():
    s = make(num_blocks=4, block_size=4, budget=64)
    important = Sequence("important", list(range(100, 108)), 20, priority=-10)
    background = Sequence("background", list(range(8)), 20, priority=50)
    s.add(background)
    s.add(important)  # newer, but higher priority
    run_step(s)  # both prefilled: all 4 blocks used
    batch = run_step(s)  # each needs a 3rd block: someone is preempted
    assert background in batch.preempted and background.status is SequenceStatus.WAITING
    assert important.status is SequenceStatus.RUNNING and batch.seqs == [important]
    assert background.order == 0  # keeps its arrival: ahead of later arrivals of its class


def test_equal_priorities_keep_fcfs_preemption_newest_first():
    s = make(num_blocks=4, block_size=4, budget=64)
    a, b = Sequence("a", list(range(8)), 20), Sequence("b", list(range(100, 108)), 20)
    s.add(a)
    s.add(b)
    run_step(s)
    assert b in run_step(s).preempted


def test_recompute_after_preemption_is_not_reported_as_cached():
    s = make(num_blocks=4, block_size=4, budget=64)
    a, b = Sequence("a", list(range(8)), 20), Sequence("b", list(range(100, 108)), 20)
    s.add(a)
    s.add(b)
    run_step(s)
    run_step(s)  # b preempted; its full blocks stay in the prefix cache
    s.finish(a)
    run_step(s)  # b re-admitted, finds its own blocks
    assert b.status is SequenceStatus.RUNNING and b.num_cached_tokens == 0


def test_block_manager_publishes_stored_and_removed_events():
    log = KvEventLog()
    s = make(num_blocks=3, block_size=4, events=log)
    a = Sequence("a", list(range(9)), 1)
    s.add(a)
    run_step(s)
    events, nxt = log.since(0)
    assert [e.type for e in events] == ["BlockStored"]
    assert events[0].block_hashes == block_hashes(a.token_ids, 4)[:2] and events[0].parent_block_hash is None
    s.finish(a)
    s.add(Sequence("b", list(range(50, 61)), 1))  # needs all 3 blocks: evicts a's cached ones
    run_step(s)
    events, _ = log.since(nxt)
    removed = {h for e in events if e.type == "BlockRemoved" for h in e.block_hashes}
    assert removed == set(block_hashes(a.token_ids, 4)[:2])
