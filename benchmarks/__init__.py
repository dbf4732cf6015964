"""edgefleet's latency benchmark suite: `edgefleet bench` and the library behind it.

Definitions follow BENCHMARKS.md and vLLM's `vllm bench serve`; see benchmarks/README.md.
"""
