"""Agent sessions over a heterogeneous fleet: a discrete-event simulation that drives the
router's real policies and prefix index (server/router/policy.py, prefix_index.py).

    python -m benchmarks.routing_quality --workload agent --rates 0.5 1 2 4 --seeds 0 1 2

Why a simulation and not processes: a load sweep of 32 chains x 8 steps x 8 policies x
several rates and seeds is hours of wall time through real sim nodes on a shared 2-core
host, and timer noise there would swamp the effects. Here time is simulated, so every
policy sees the same chains at the same instants, and the numbers are exact functions of
the model below. What is real: the policy code, the cost model, the prefix index with its
LRU bounds and its correction from reported ``cached_tokens``, the router's between-poll
accounting (``Node.pending``) and one-second capacity polls. What is modelled:

* a node: ``max_num_seqs`` slots, FIFO queue for a slot; one prefill at a time at
  ``prefill_tokens_per_s`` on the uncached tokens only; decode of ``output`` tokens at
  ``decode_ms + decode_ms_per_seq x running`` per step (fixed at admission); RTT/2 each way;
* its prefix cache: chained block hashes of the canonical text (the same hashing as the
  router's: the node's "tokens" are the router's 4-character approximation), LRU over a
  KV budget of ``kv_tokens``; the prompt's blocks are cached at admission and the reply's
  at the end, as vLLM caches full blocks of both;
* an agent chain: a shared ~2k-token system prompt, a per-chain task, ``steps`` calls;
  each call's reply (a tool call, 30-90 tokens) and a tool result (200-800 tokens) are
  appended after an exponential think time; chains arrive as a Poisson process and send
  a session key.

The oracle knows every node's cache and queue exactly and predicts TTFT from them.
All labelled SIMULATED.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.capacity.schema import Capacity, EngineLoad, Identity, ModelEntry, Performance, Prediction
from server.router.breaker import CircuitBreaker
from server.router.policy import REF_PROMPT_TOKENS, Estimate, RequestInfo, make_policy
from server.router.prefix_index import BLOCK_TOKENS, PrefixIndex, block_hashes, canonical_chat, session_hash
from server.router.registry import Node, NodeSpec

MODEL = "sim-model"
AGENT_POLICIES = ("round_robin", "least_loaded", "cache_blind", "cache_aware", "session_sticky", "nearest_idle",
                  "oracle")
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Shape:
    name: str
    rtt_ms: float
    prefill_tokens_per_s: float
    decode_ms: float
    decode_ms_per_seq: float
    max_num_seqs: int
    kv_tokens: int


# The routing_quality fleet, with KV budgets in proportion to each box's memory.
FLEET = (
    Shape("gpu-big-far", 30.0, 8000, 10, 0.2, 32, 160_000),
    Shape("gpu-small", 4.0, 3000, 20, 0.5, 16, 64_000),
    Shape("cpu-box", 1.0, 1500, 50, 2, 8, 32_000),
    Shape("old-laptop-far", 40.0, 800, 80, 3, 4, 16_000),
)
# Four like boxes: where a cache-blind router spreads every chain over every cache.
HOMOGENEOUS = tuple(Shape(f"gpu-{i}", 2.0 + i, 3000, 20, 0.5, 16, 64_000) for i in range(4))
FLEETS = {"hetero": FLEET, "homogeneous": HOMOGENEOUS}


@dataclass(slots=True)
class Job:
    chain: int
    step: int
    text: str
    hashes: list[int]
    out_hashes: list[int]  # prompt + reply, cached by the node when the reply is done
    prompt_tokens: int
    output: int
    sent: float = 0.0
    node: int = -1
    cached: int = 0
    first_token: float = 0.0
    done: float = 0.0
    predicted_blocks: int = 0
    est: Estimate | None = None
    session: str | None = None


@dataclass(slots=True)
class SimNode:
    shape: Shape
    cache: OrderedDict[int, None] = field(default_factory=OrderedDict)
    lane_free: float = 0.0
    running: list[float] = field(default_factory=list)  # finish times
    queue: deque[Job] = field(default_factory=deque)
    queued_uncached: int = 0

    @property
    def kv_blocks(self) -> int:
        return self.shape.kv_tokens // BLOCK_TOKENS

    def match(self, hashes: list[int]) -> int:
        n = 0
        for h in hashes:
            if h not in self.cache:
                break
            n += 1
        return n

    def touch(self, hashes: list[int]) -> None:
        cache = self.cache
        for h in reversed(hashes):  # parents most recent: tails of old chains go first
            cache[h] = None
            cache.move_to_end(h)
        while len(cache) > self.kv_blocks:
            cache.popitem(last=False)

    def uncached(self, job: Job) -> int:
        return max(1, job.prompt_tokens - self.match(job.hashes) * BLOCK_TOKENS)

    def wait_s(self, now: float, uncached: int = 0) -> float:
        """Exact time until a request arriving ``now`` starts its prefill (FIFO)."""
        s = self.shape
        lane = max(now, self.lane_free) + self.queued_uncached / s.prefill_tokens_per_s
        if len(self.running) + len(self.queue) < s.max_num_seqs:
            return lane - now
        fin = sorted(self.running)
        k = len(self.queue) - (s.max_num_seqs - len(self.running))
        slot = fin[k] if k < len(fin) else fin[-1] + (k - len(fin) + 1) * 1.0
        return max(lane, slot) - now


class Sim:
    """One run: one policy, one fleet, one list of chains."""

    def __init__(self, shapes: tuple[Shape, ...], policy: str, seed: int, poll_s: float = 1.0):
        self.shapes = shapes
        self.nodes = [SimNode(s) for s in shapes]
        self.index = PrefixIndex()
        self.policy_name = policy
        self.policy = None if policy == "oracle" else make_policy(policy, seed, self.index)
        self.router_nodes = [Node.from_spec(NodeSpec(url=f"http://{s.name}:1", name=s.name), CircuitBreaker())
                             for s in shapes]
        self.events: list[tuple[float, int, Any, tuple]] = []
        self._seq = 0
        self.now = 0.0
        self.poll_s = poll_s
        self.jobs: list[Job] = []
        self.chain_start: dict[int, float] = {}
        self.chain_end: dict[int, float] = {}
        self._queued_sessions: dict[int, str | None] = {}
        self.poll()

    # --- event loop --------------------------------------------------------------------

    def at(self, t: float, fn: Any, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, fn, args))

    def run(self, until_idle: bool = True) -> None:
        while self.events:
            t, _, fn, args = heapq.heappop(self.events)
            self.now = t
            fn(*args)
            if until_idle and len(self.events) == 1 and self.events[0][2] == self.poll:
                break

    # --- the router ----------------------------------------------------------------------

    def poll(self) -> None:
        for sn, rn in zip(self.nodes, self.router_nodes):
            s = sn.shape
            wait_ms = sn.wait_s(self.now) * 1000.0
            running = len(sn.running)
            step = s.decode_ms + s.decode_ms_per_seq * running
            cap = Capacity(
                timestamp=self.now,
                identity=Identity(node_id=s.name, name=s.name, version="sim", engine="sim", simulated=True),
                state="ready", models=[ModelEntry(id=MODEL, root="sim", max_model_len=131072, dtype="simulated")],
                accelerators=[], cpu_only=False,
                load=EngineLoad(running=running, waiting=len(sn.queue), waiting_prompt_tokens=sn.queued_uncached,
                                kv_cache_usage=min(1.0, len(sn.cache) / max(1, sn.kv_blocks)),
                                kv_free_tokens=max(0, s.kv_tokens - len(sn.cache) * BLOCK_TOKENS),
                                kv_total_tokens=s.kv_tokens, max_concurrent_sequences=s.max_num_seqs),
                performance=Performance(window_s=60, requests=10, prefill_tokens_per_s=s.prefill_tokens_per_s,
                                        tpot_p50_ms=step),
                idle=running + len(sn.queue) == 0,
                prediction=Prediction(prompt_tokens=REF_PROMPT_TOKENS, max_tokens=128,
                                      predicted_ttft_ms=wait_ms + REF_PROMPT_TOKENS * 1000.0 / s.prefill_tokens_per_s,
                                      predicted_queue_wait_ms=wait_ms, would_admit=True, reason="sim"))
            rn.on_poll(cap, s.rtt_ms, self.now)
        self.at(self.now + self.poll_s, self.poll)

    def route(self, job: Job, session: str) -> int:
        if self.policy is None:  # oracle: exact cache and exact queue
            best, best_t = 0, float("inf")
            for i, sn in enumerate(self.nodes):
                s = sn.shape
                arrive = self.now + s.rtt_ms / 2000.0
                t = arrive + sn.wait_s(arrive) + sn.uncached(job) / s.prefill_tokens_per_s + s.rtt_ms / 2000.0
                if t < best_t:
                    best, best_t = i, t
            return best
        info = RequestInfo(job.prompt_tokens, job.output, job.hashes, session, now=self.now)
        ranked = self.policy.rank(self.router_nodes, info)
        first = ranked[0]
        i = self.router_nodes.index(first.node)
        first.node.on_dispatch(first.prefill_tokens, self.now + (first.wait_ms + first.prefill_ms) / 1000.0)
        job.est = first
        return i

    # --- a request's life ------------------------------------------------------------------

    def send(self, job: Job, session: str | None) -> None:
        job.sent = self.now
        job.session = session
        i = self.route(job, session)
        job.node = i
        self.at(self.now + self.shapes[i].rtt_ms / 2000.0, self.arrive, job, session)

    def arrive(self, job: Job, session: str) -> None:
        sn = self.nodes[job.node]
        if len(sn.running) < sn.shape.max_num_seqs and not sn.queue:
            self.admit(sn, job, session)
        else:
            sn.queue.append(job)
            sn.queued_uncached += sn.uncached(job)
            self._queued_sessions[id(job)] = session

    def admit(self, sn: SimNode, job: Job, session: str) -> None:
        s = sn.shape
        matched = sn.match(job.hashes)
        job.cached = min(job.prompt_tokens - 1, matched * BLOCK_TOKENS)
        start = max(self.now, sn.lane_free)
        sn.lane_free = start + (job.prompt_tokens - job.cached) / s.prefill_tokens_per_s
        sn.touch(job.hashes)
        step_s = (s.decode_ms + s.decode_ms_per_seq * (len(sn.running) + 1)) / 1000.0
        finish = sn.lane_free + job.output * step_s
        sn.running.append(finish)
        half = s.rtt_ms / 2000.0
        self.at(sn.lane_free + half, self.first_token, job, session)
        self.at(finish, self.finish, sn, job, finish)
        self.at(finish + half, self.client_done, job)

    def first_token(self, job: Job, session: str) -> None:
        job.first_token = self.now
        if self.policy is not None:  # the router indexes what answered
            rn = self.router_nodes[job.node]
            self.index.set_capacity(rn.url, self.shapes[job.node].kv_tokens)
            job.predicted_blocks = self.index.match(rn.url, job.hashes, session)
            self.index.insert(rn.url, job.hashes, session, now=self.now)

    def finish(self, sn: SimNode, job: Job, finish: float) -> None:
        sn.running.remove(finish)
        sn.touch(job.out_hashes)
        if sn.queue:
            nxt = sn.queue.popleft()
            sn.queued_uncached -= sn.uncached(nxt)
            sn.queued_uncached = max(0, sn.queued_uncached)
            self.admit(sn, nxt, self._queued_sessions.pop(id(nxt)))

    def client_done(self, job: Job) -> None:
        job.done = self.now
        if self.policy is not None:
            rn = self.router_nodes[job.node]
            rn.on_done()
            self.index.correct(rn.url, job.hashes, job.cached, job.predicted_blocks, job.session)
        self.jobs.append(job)
        self.on_step_done(job)

    def on_step_done(self, job: Job) -> None:  # set by the workload
        raise NotImplementedError


# --- the agent workload ----------------------------------------------------------------------

def _filler(rng: random.Random, tokens: int, tag: str) -> str:
    words = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta")
    out = [tag]
    n = 0
    while n < tokens * CHARS_PER_TOKEN:
        w = rng.choice(words)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


@dataclass(slots=True)
class Chain:
    cid: int
    arrival: float
    messages: list[dict[str, Any]]
    steps: int
    replies: list[str]
    tools: list[str]
    think: list[float]
    step: int = 0


def make_chains(n: int, steps: int, rate: float, seed: int, system_tokens: int = 2000) -> list[Chain]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    system = _filler(random.Random(12345), system_tokens, "SYSTEM")  # shared by every chain
    t = 0.0
    chains = []
    for c in range(n):
        t += float(nrng.exponential(1.0 / rate))
        task = _filler(rng, rng.randint(100, 300), f"TASK-{seed}-{c}")
        chains.append(Chain(
            cid=c, arrival=t, steps=steps,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": task}],
            replies=[_filler(rng, rng.randint(30, 90), f"CALL-{c}-{k}") for k in range(steps)],
            tools=[_filler(rng, rng.randint(200, 800), f"RESULT-{c}-{k}") for k in range(steps)],
            think=[float(nrng.exponential(1.0)) for _ in range(steps)]))
    return chains


def _job(chain: Chain) -> Job:
    k = chain.step
    text = canonical_chat(MODEL, chain.messages)
    reply = {"role": "assistant", "content": chain.replies[k]}
    out_text = canonical_chat(MODEL, [*chain.messages, reply])
    return Job(chain.cid, k, text, block_hashes(text), block_hashes(out_text), max(1, len(text) // CHARS_PER_TOKEN),
               max(1, len(chain.replies[k]) // CHARS_PER_TOKEN))


def run_agent(shapes: tuple[Shape, ...], policy: str, chains: list[Chain], seed: int) -> dict[str, Any]:
    sim = Sim(shapes, policy, seed)
    sessions = {c.cid: session_hash(f"chain-{seed}-{c.cid}") for c in chains}
    by_id = {c.cid: c for c in chains}

    def start(chain: Chain) -> None:
        sim.chain_start[chain.cid] = sim.now
        sim.send(_job(chain), sessions[chain.cid])

    def step_done(job: Job) -> None:
        chain = by_id[job.chain]
        k = chain.step
        chain.messages.append({"role": "assistant", "content": chain.replies[k]})
        chain.messages.append({"role": "user", "content": chain.tools[k]})
        chain.step += 1
        if chain.step >= chain.steps:
            sim.chain_end[chain.cid] = sim.now
            return
        sim.at(sim.now + chain.think[k], lambda: sim.send(_job(chain), sessions[chain.cid]))

    sim.on_step_done = step_done  # type: ignore[method-assign]
    for c in chains:
        sim.at(c.arrival, start, c)
    sim.run()
    return summarize_agent(sim, chains)


def summarize_agent(sim: Sim, chains: list[Chain], ttft_slo_s: float = 2.0) -> dict[str, Any]:
    jobs = sim.jobs
    ttft = np.array([j.first_token - j.sent for j in jobs])
    chain_t = np.array([sim.chain_end[c] - sim.chain_start[c] for c in sim.chain_end])
    prompt = sum(j.prompt_tokens for j in jobs)
    cached = sum(j.cached for j in jobs)
    makespan = max(j.done for j in jobs) - min(j.sent for j in jobs)
    spread = [0] * len(sim.nodes)
    for j in jobs:
        spread[j.node] += 1
    return {"steps": len(jobs), "chains": len(chain_t),
            "chain_p50_s": float(np.percentile(chain_t, 50)), "chain_p99_s": float(np.percentile(chain_t, 99)),
            "ttft_p50_s": float(np.percentile(ttft, 50)), "ttft_p99_s": float(np.percentile(ttft, 99)),
            "hit_rate": cached / max(1, prompt), "prompt_tokens": prompt, "cached_tokens": cached,
            "goodput_sps": float((ttft <= ttft_slo_s).sum()) / makespan,
            "predicted_cached_tokens": sim.index.stats.predicted_tokens,
            "reported_cached_tokens": sim.index.stats.reported_tokens,
            "spread": {s.name: n for s, n in zip(sim.shapes, spread)}}


def single_node(shapes: tuple[Shape, ...]) -> tuple[Shape, ...]:
    """The fleet's memory and slots in one box: the hit rate nothing scattered can beat."""
    big = max(shapes, key=lambda s: s.prefill_tokens_per_s)
    return (Shape("single", big.rtt_ms, big.prefill_tokens_per_s, big.decode_ms, big.decode_ms_per_seq,
                  sum(s.max_num_seqs for s in shapes), sum(s.kv_tokens for s in shapes)),)


# --- independent requests (the existing workload), same simulation ---------------------------

def run_independent(shapes: tuple[Shape, ...], policy: str, n: int, rate: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    sim = Sim(shapes, policy, seed)
    sim.on_step_done = lambda job: None  # type: ignore[method-assign]
    t = 0.0
    for i in range(n):
        t += float(nrng.exponential(1.0 / rate))
        text = canonical_chat(MODEL, [{"role": "user", "content": _filler(rng, rng.randint(100, 1500), f"Q{seed}-{i}")}])
        job = Job(-1, i, text, block_hashes(text), [], len(text) // CHARS_PER_TOKEN, rng.randint(16, 96))
        sim.at(t, sim.send, job, None)
    sim.run()
    ttft = np.array([j.first_token - j.sent for j in sim.jobs])
    return {"ttft_p50_s": float(np.percentile(ttft, 50)), "ttft_p99_s": float(np.percentile(ttft, 99)),
            "e2el_p50_s": float(np.percentile([j.done - j.sent for j in sim.jobs], 50))}
