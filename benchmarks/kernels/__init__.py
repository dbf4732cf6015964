"""Kernel micro-benchmarks: one script per kernel, each comparing Triton (CUDA) with the
PyTorch reference and torch's own ops (CPU). Run ``python -m benchmarks.kernels.bench_<name>``."""
