"""Dense bf16 linear on CPU: ``F.linear`` against the oneDNN-prepacked weight the native
engine uses (``DenseLinear.prepack_onednn``), on the 0.5B benchmark model's shapes.

    python -m benchmarks.kernels.bench_dense_linear

Each weight is as large as in the model, so batch-1 rows show the memory-bound GEMV; the
LM head (151936 x 896) is a single 272 MB read. On a GPU there is nothing to prepack."""

import torch
import torch.nn.functional as F

from server.engine.native.linear import DenseLinear, onednn_bf16_available

from .common import report, time_us

SHAPES = {"qkv": (1152, 896), "o": (896, 896), "gate_up": (9728, 896), "down": (896, 4864),
          "lm_head": (151936, 896)}


def main() -> None:
    if not onednn_bf16_available():
        print("this CPU has no oneDNN bf16 kernels: the engine keeps F.linear, nothing to compare")
        return
    rows = []
    with torch.inference_mode():
        for name, (n, k) in SHAPES.items():
            w = torch.randn(n, k, dtype=torch.bfloat16) * 0.02
            packed = DenseLinear(w.clone())
            packed.prepack_onednn()
            for m in (1, 32, 128):
                x = torch.randn(m, k, dtype=torch.bfloat16)
                repeat = 5 if name == "lm_head" else 20
                plain = time_us(lambda: F.linear(x, w), repeat=repeat)
                pre = time_us(lambda: packed(x), repeat=repeat)
                rows.append({"weight": name, "rows": m, "f_linear_us": plain, "prepacked_us": pre,
                             "speedup": plain / pre})
    report("dense_linear", rows)


if __name__ == "__main__":
    main()
