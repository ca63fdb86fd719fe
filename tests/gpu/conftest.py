"""GPU engine tests: they run where torch sees a CUDA device and skip elsewhere (CI has
neither torch nor a GPU), saying why. ``TANDEM_GPU_TESTS_ON_CPU=1`` runs them on the
CPU with small shapes and no CUDA graphs, for developing the logic without a GPU.

Run on the GPU machine: ``bash tests/gpu/run.sh`` (writes docs/gpu_tests.txt).
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def device() -> str:
    torch = pytest.importorskip("torch", reason="GPU tests need torch (CI has no GPU)")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TANDEM_GPU_TESTS_ON_CPU") == "1":
        return "cpu"
    pytest.skip("no CUDA device (GPU tests run on the GPU machine: tests/gpu/run.sh)")
