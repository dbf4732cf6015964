"""One-shot GPU check for a device session: kernel tests on CUDA, kernel benchmarks, and the
native engine's greedy equality with transformers on the GPU.

    python -m benchmarks.kernels.gpu_check            # exits non-zero on any failure

Writes benchmarks/results/kernels/*_cuda.{json,md} and prints a summary. Sized to finish in
a few minutes on one GPU (tiny shapes for tests, realistic ones for timings).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def run(cmd: list[str], timeout: int) -> bool:
    t = time.time()
    print("$", " ".join(cmd), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    ok = subprocess.run(cmd, timeout=timeout, env=env).returncode == 0
    print(f"-> {'ok' if ok else 'FAILED'} in {time.time() - t:.0f}s\n", flush=True)
    return ok


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (CPU tests run under TRITON_INTERPRET)")
        return 2
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    py = sys.executable
    results = {"kernel tests (cuda)": run([py, "-m", "pytest", "-q", "tests/kernels"], 300)}
    for name in ("rmsnorm", "rotary", "silu_mul", "paged_attention", "quant_matmul"):
        results[f"bench {name}"] = run([py, "-m", f"benchmarks.kernels.bench_{name}"], 120)
    # The engine on GPU: greedy tokens vs transformers (the test picks CUDA when present).
    results["native engine vs transformers (cuda)"] = run(
        [py, "-m", "pytest", "-q", "tests/engine/native/test_native_vs_transformers.py",
         "-k", "greedy and llama"], 300)
    # Decode steps captured as CUDA graphs give the plain path's tokens.
    results["decode graphs (cuda)"] = run(
        [py, "-m", "pytest", "-q", "tests/engine/native/test_native_decode_graphs.py"], 300)
    print("\n".join(f"{'PASS' if ok else 'FAIL'}  {k}" for k, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
