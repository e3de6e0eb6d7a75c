"""The interpreter fix: runtime loop bounds work under TRITON_INTERPRET=1 with NumPy >= 2.4; blocks stay errors."""
import pytest
import torch
import triton
import triton.language as tl

from phase3_paged_fp8 import interp_compat
from phase3_paged_fp8.paged_decode import interpreting

pytestmark = pytest.mark.skipif(not interpreting(), reason="only the CPU interpreter needs the fix")


@triton.jit
def _count_kernel(n_ptr, out_ptr, STEP: tl.constexpr):
    n = tl.load(n_ptr + tl.program_id(0))  # a runtime value as the loop bound
    acc = 0
    for _ in range(0, n, STEP):
        acc += 1
    tl.store(out_ptr + tl.program_id(0), acc)


def test_runtime_loop_bound():
    assert interp_compat.apply()  # idempotent: the package applied it already
    n = torch.tensor([7, 0, 16], dtype=torch.int32)
    out = torch.zeros(3, dtype=torch.int32)
    _count_kernel[(3,)](n, out, STEP=4)
    assert out.tolist() == [2, 0, 4]


@triton.jit
def _bad_kernel(out_ptr):
    for _ in range(0, tl.arange(0, 4), 1):
        pass
    tl.store(out_ptr, 1)


def test_block_as_bound_is_still_an_error():
    with pytest.raises(Exception, match="only scalars can be used as an index"):
        _bad_kernel[(1,)](torch.zeros(1, dtype=torch.int32))
