"""Phase 3: Triton PagedAttention (decode and prefill), FP8 KV cache, 128K context."""
from phase3_paged_fp8 import interp_compat as _interp_compat

_interp_compat.apply()
