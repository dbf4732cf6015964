"""The router's prefix index: canonicalisation, chained block hashes, LRU bounds, corrections."""

from server.edge.protocol import ChatCompletionRequest
from server.router.prefix_index import (BLOCK_CHARS, PrefixIndex, block_hashes, canonical_chat, session_hash)

SYSTEM = "You are a careful agent. " * 120  # ~3000 characters: several blocks


def chat(*messages, tools=None):
    body = {"model": "m", "messages": list(messages)}
    if tools:
        body["tools"] = tools
    return ChatCompletionRequest.model_validate(body)


def hashes(req):
    return block_hashes(canonical_chat(req.model, req.messages, req.tools))


def conversation(steps: int):
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "fix the bug in parser.py " * 20}]
    for i in range(steps):
        msgs.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": "read", "arguments": f'{{"f": {i}}}'}}]})
        msgs.append({"role": "tool", "tool_call_id": f"c{i}", "content": f"file contents {i} " * 60})
    return msgs


def test_same_conversation_twice_matches_fully():
    a, b = hashes(chat(*conversation(2))), hashes(chat(*conversation(2)))
    assert a == b and len(a) > 10
    idx = PrefixIndex()
    idx.insert("n", a)
    assert idx.match("n", b) == len(b)
    assert idx.match("other", b) == 0


def test_changed_system_prompt_does_not_match():
    base = conversation(1)
    changed = [{"role": "system", "content": "X" + SYSTEM[1:]}, *base[1:]]
    idx = PrefixIndex()
    idx.insert("n", hashes(chat(*base)))
    assert idx.match("n", hashes(chat(*changed))) == 0
    # Tools come before the messages in the template: a changed tool list changes everything.
    tool = {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}
    assert idx.match("n", hashes(chat(*base, tools=[tool]))) == 0


def test_appended_tool_results_extend_the_match():
    idx = PrefixIndex()
    step1 = hashes(chat(*conversation(1)))
    idx.insert("n", step1)
    step2 = hashes(chat(*conversation(2)))
    assert len(step2) > len(step1)
    m = idx.match("n", step2)
    # Everything but the last (partial, then re-cut) block of step 1 is still a prefix of step 2.
    assert len(step1) - 1 <= m <= len(step1)
    idx.insert("n", step2)
    assert idx.match("n", step2) == len(step2)


def test_list_of_parts_is_the_same_text():
    a = chat({"role": "user", "content": "hello " * 100})
    b = chat({"role": "user", "content": [{"type": "text", "text": "hello " * 50}, {"type": "text", "text": "hello " * 50}]})
    assert hashes(a) == hashes(b)


def test_only_full_blocks_are_hashed_and_chained():
    assert block_hashes("x" * (BLOCK_CHARS - 1)) == []
    h = block_hashes("a" * BLOCK_CHARS * 3)
    assert len(h) == 3 and len(set(h)) == 3  # equal block text, different parents


def test_lru_eviction_by_kv_capacity_keeps_shared_prefix():
    idx = PrefixIndex(block_tokens=64)
    idx.set_capacity("n", 64 * 10)  # the node holds at most 10 blocks
    shared = block_hashes("s" * BLOCK_CHARS * 4)
    chains = [block_hashes("s" * BLOCK_CHARS * 4 + str(i) * BLOCK_CHARS * 4) for i in range(3)]
    for i, c in enumerate(chains):
        assert c[:4] == shared
        idx.insert("n", c, now=float(i))
    assert idx.blocks("n") == 10
    assert idx.match("n", chains[2]) == 8  # the newest chain is whole
    assert idx.match("n", shared) == 4  # the shared prefix outlives old tails
    assert idx.match("n", chains[0]) < 8  # the oldest chain lost its tail


def test_memory_is_bounded_per_node_and_in_total():
    idx = PrefixIndex(max_blocks_per_node=50, max_blocks_total=120)
    for node in ("a", "b", "c"):
        for i in range(10):
            idx.insert(node, block_hashes(f"{node}{i}" * BLOCK_CHARS * 4))
            assert idx.blocks(node) <= 50
    assert idx.total_blocks <= 120
    assert sum(idx.blocks(n) for n in "abc") == idx.total_blocks
    assert idx.blocks("c") == 50  # the most recently used node kept its share


def test_forget_and_correct():
    idx = PrefixIndex(block_tokens=64)
    h = hashes(chat(*conversation(2)))
    idx.insert("n", h, session="s1")
    idx.forget("n")
    assert idx.match("n", h) == 0 and idx.match("n", h, session="s1") == 0 and idx.total_blocks == 0
    idx.insert("n", h)
    predicted = idx.match("n", h)
    idx.correct("n", h, reported_cached_tokens=64 * 3, predicted_blocks=predicted)
    assert idx.match("n", h) == 3  # the node said it had only three blocks: the rest is gone
    assert idx.stats.reports == 1 and idx.stats.predicted_tokens == 64 * predicted
    assert idx.stats.reported_tokens == 192
    idx.correct("n", h, reported_cached_tokens=64 * 3, predicted_blocks=3)  # agreeing report trims nothing
    assert idx.match("n", h) == 3


def test_session_credits_its_last_node():
    idx = PrefixIndex(max_blocks_per_node=4)
    h = block_hashes("q" * BLOCK_CHARS * 8)
    idx.insert("a", h, session="s")  # the block map keeps only 4 of the 8 blocks (the prefix)
    assert idx.match("a", h) == 4
    assert idx.match("a", h, session="s") == 8  # the session's last node is credited with all
    assert idx.match("b", h, session="s") == 0
    assert session_hash("key") != "key" and len(session_hash("key")) == 16


def test_a_report_trims_the_sessions_credit():
    idx = PrefixIndex(block_tokens=64)
    h = block_hashes("z" * BLOCK_CHARS * 6)
    idx.insert("a", h, session="s")
    idx.correct("a", h, reported_cached_tokens=128, predicted_blocks=6, session="s")
    assert idx.match("a", h, session="s") == 2  # neither the block map nor the session claims more
