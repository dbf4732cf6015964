"""Kernels for the native engine. Each is a quartet: a Triton kernel + launcher
(``kernels/<name>.py``), a PyTorch reference (``kernels/reference.py``), a test
(``tests/kernels/``) and a benchmark (``benchmarks/kernels/``).

This package marker imports nothing: importing ``kernels`` must not import Triton (CPU
nodes use only ``kernels.reference``).
"""
