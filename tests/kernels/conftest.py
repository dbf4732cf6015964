"""Kernel tests run on CUDA when present, else on CPU under Triton's interpreter.

TRITON_INTERPRET must be set before any kernel module is imported (``@triton.jit`` reads
it at decoration time), hence here, at collection.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

# dtype -> (atol, rtol) against the PyTorch reference computed in the same dtype. fp32 is
# loose enough for TF32 tl.dot on GPU; bf16/fp16 allow one or two roundings of the output.
TOL = {torch.float32: (2e-3, 2e-3), torch.float16: (2e-2, 1e-2), torch.bfloat16: (6e-2, 3e-2)}
# Under the interpreter fp16/bf16 math runs through numpy; keep the CPU set small and exact-ish.
DTYPES = [torch.float32, torch.bfloat16] if not torch.cuda.is_available() else list(TOL)


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    atol, rtol = TOL[expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)
