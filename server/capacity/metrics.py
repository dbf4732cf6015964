"""Prometheus metrics. vLLM's metric names where vLLM has one, so existing dashboards work
for every engine; ``edgefleet_*`` for node state and accelerators. One registry per node.

Every engine also speaks the Gateway API Inference Extension's model-server protocol (what
llm-d's endpoint picker scrapes): ``vllm:num_requests_waiting``, ``vllm:num_requests_running``
and ``vllm:kv_cache_usage_perc`` (gauges), ``vllm:cache_config_info`` (an info-style gauge,
value 1, labels ``block_size`` and ``num_gpu_blocks`` among others) and
``vllm:lora_requests_info`` (a gauge whose value is the last update's Unix time, labels
``max_lora``, ``running_lora_adapters``, ``waiting_lora_adapters``; edgefleet serves no LoRA
adapters, so the lists are empty and ``max_lora`` is 0)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.capacity.schema import Capacity

# vLLM's buckets (seconds)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)
STATES = ("starting", "ready", "draining", "sleeping")


@dataclass(slots=True)
class ModelLoad:
    """One model's share of the engine gauges (a model host exports one per model)."""

    model_name: str
    running: int
    waiting: int
    kv_cache_usage: float


class NodeMetrics:
    def __init__(self, model_name: str):
        self.registry = r = CollectorRegistry()
        self.model_name = model_name
        m = ["model_name"]
        self.running = Gauge("vllm:num_requests_running", "Requests running on the engine.", m, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", m, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent.", m, registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", m,
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency.", m,
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", m,
                             buckets=E2E_BUCKETS, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", m, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generation tokens produced.", m, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests.", m + ["finished_reason"], registry=r)
        self.cache_config = Gauge("vllm:cache_config_info", "Information of the engine's KV cache configuration.",
                                  ["block_size", "num_gpu_blocks", "enable_prefix_caching", "engine"], registry=r)
        self.lora_info = Gauge("vllm:lora_requests_info", "Running stats on LoRA requests.",
                               ["max_lora", "running_lora_adapters", "waiting_lora_adapters"], registry=r)
        self.state = Gauge("edgefleet_node_state", "1 for the node's current state.", ["state"], registry=r)
        self.in_flight = Gauge("edgefleet_requests_in_flight", "Requests admitted and not finished.", registry=r)
        self.tasks = Gauge("edgefleet_asyncio_tasks", "asyncio tasks alive in the node's event loop (set per scrape).",
                           registry=r)
        self.rejected = Counter("edgefleet_requests_rejected", "Requests refused at admission.", ["reason"],
                                registry=r)
        acc = ["index", "kind", "name"]
        self.acc_mem_used = Gauge("edgefleet_accelerator_memory_used_bytes", "Accelerator memory in use.", acc,
                                  registry=r)
        self.acc_mem_total = Gauge("edgefleet_accelerator_memory_total_bytes", "Accelerator memory.", acc,
                                   registry=r)
        self.acc_util = Gauge("edgefleet_accelerator_utilization_percent", "Accelerator utilisation.", acc,
                              registry=r)
        self.acc_temp = Gauge("edgefleet_gpu_temperature_celsius", "GPU temperature.", acc, registry=r)
        self.acc_power = Gauge("edgefleet_gpu_power_watts", "GPU power draw.", acc, registry=r)

    def for_model(self, model_name: str) -> NodeMetrics:
        """A view that records under ``model_name`` into this registry: a model host gives
        each model's runtime one, so one /metrics carries every model (label ``model_name``)
        and a model's counters survive its unloads."""
        view = copy.copy(self)
        view.model_name = model_name
        return view

    def observe_request(self, *, ttft_s: float | None, itls: list[float], e2e_s: float, prompt_tokens: int,
                        completion_tokens: int, finish_reason: str) -> None:
        lbl = self.model_name
        if ttft_s is not None:
            self.ttft.labels(lbl).observe(ttft_s)
        for gap in itls:
            self.itl.labels(lbl).observe(gap)
        self.e2e.labels(lbl).observe(e2e_s)
        self.prompt_tokens.labels(lbl).inc(prompt_tokens)
        self.generation_tokens.labels(lbl).inc(completion_tokens)
        self.success.labels(lbl, finish_reason).inc()

    def render(self, cap: Capacity, in_flight: int, models: list[ModelLoad] | None = None) -> bytes:
        """The exposition: the engine gauges per model (``models``; by default this node's one
        model from ``cap.load``), the node's state, admission and accelerators from ``cap``."""
        if models is None:
            models = [ModelLoad(self.model_name, cap.load.running, cap.load.waiting, cap.load.kv_cache_usage)]
        for m in models:
            self.running.labels(m.model_name).set(m.running)
            self.waiting.labels(m.model_name).set(m.waiting)
            self.kv_usage.labels(m.model_name).set(m.kv_cache_usage)
        if cap.cache is not None and cap.cache.block_size:
            blocks = cap.load.kv_total_tokens // cap.cache.block_size
            self.cache_config.clear()  # one series: the current configuration
            self.cache_config.labels(str(cap.cache.block_size), str(blocks),
                                     str(cap.cache.prefix_caching), "0").set(1)
        self.lora_info.labels("0", "", "").set_to_current_time()
        for s in STATES:
            self.state.labels(s).set(1 if cap.state == s else 0)
        self.in_flight.set(in_flight)
        with contextlib.suppress(RuntimeError):  # no running loop: rendered outside the server
            self.tasks.set(len(asyncio.all_tasks()))  # a leak shows here first (benchmarks/soak.py)
        for a in cap.accelerators:
            key = (str(a.index), a.kind, a.name)
            if a.memory_used_bytes is not None:
                self.acc_mem_used.labels(*key).set(a.memory_used_bytes)
            if a.memory_total_bytes is not None:
                self.acc_mem_total.labels(*key).set(a.memory_total_bytes)
            if a.utilization_pct is not None:
                self.acc_util.labels(*key).set(a.utilization_pct)
            if a.temperature_c is not None:
                self.acc_temp.labels(*key).set(a.temperature_c)
            if a.power_draw_w is not None:
                self.acc_power.labels(*key).set(a.power_draw_w)
        return generate_latest(self.registry)
