"""profile_seesaw (the launcher Nsight Compute profiles on the GPU machine): on a CPU machine it refuses clearly."""
import pytest
import torch

from phase2_mla import profile_seesaw


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this runs the kernel (tools/device_session.sh mlancu)")
def test_profile_seesaw_needs_cuda_and_says_so():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        profile_seesaw.main([])
