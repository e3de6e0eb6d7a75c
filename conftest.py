"""Suite-wide pytest setup.

- Without CUDA, Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1 must be set before any kernel
  module is imported, so it is set here).
- Tests marked `gpu` are skipped with the reason when CUDA is absent: "skipped (needs CUDA)", never passed.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (GPU criterion; run `make test-gpu` on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
