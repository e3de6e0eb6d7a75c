"""Phase 3: Triton PagedAttention (decode and prefill), FP8 KV cache, 128K context.

Without a GPU the Triton kernels can only run in Triton's CPU interpreter, which must be chosen before any kernel
module is imported: importing this package selects it (as conftest.py does for the test suite) unless
TRITON_INTERPRET is already set, and applies the interpreter fix in interp_compat.py.
"""
import os

import torch

from phase3_paged_fp8 import interp_compat as _interp_compat

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
_interp_compat.apply()
