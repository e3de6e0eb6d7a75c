"""The Gluon MLA kernel's building blocks, alone: a debugging ladder for its first run on a Hopper GPU.

    o = (a @ c^T) @ c       a [64, 576] (q: latent 512 | rope 64), c [64, 576] (one page tile: latent | rope key)

is one tile of mla_decode_gluon.py without the softmax, the ring, the splits or the block table: the same TMA boxes
([64, 512] latent and [64, 64] rope boxes into 128-byte-swizzled shared memory, one mbarrier with expect-tx), the same
score wgmma (warps [4, 2]: each warpgroup half of the 64 token columns, the latent then the rope key chained
asynchronously), p written to shared memory by both warpgroups (fence + CTA barrier), and the same value wgmma
(each warpgroup 256 of the 512 latent columns, B read from the un-permuted swizzled tile). If the MLA kernel is wrong
on the GPU and this is right, the bug is in what this leaves out (online softmax, masking, ring phases, splits); if
this is wrong too, it is in the layouts / TMA / wgmma plumbing they share.

    python -m phase2_mla.gluon_smoke      # on a Hopper GPU: max |diff| against PyTorch, fp32 accumulation
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from phase2_mla.mla_decode_gluon import (BLOCK_H, BLOCK_N, NUM_WARPS, _layouts, split_columns_layout,
                                         tile_desc_signature)


@gluon.jit
def smoke_kernel(a_desc, ape_desc, c_desc, cpe_desc, s_ptr, o_ptr, DC: gl.constexpr, DR: gl.constexpr):
    """s = a @ c^T (fp32, [64, 64]) and o = bf16(s) @ c[:, :DC] (fp32, [64, DC]) for one 64 x 64 tile."""
    BH: gl.constexpr = a_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[0]
    dtype: gl.constexpr = a_desc.dtype
    s_layout: gl.constexpr = split_columns_layout(BN)
    o_layout: gl.constexpr = split_columns_layout(DC)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BH, BN], dtype)

    a_smem = gl.allocate_shared_memory(dtype, [BH, DC], a_desc.layout)
    ape_smem = gl.allocate_shared_memory(dtype, [BH, DR], ape_desc.layout)
    c_smem = gl.allocate_shared_memory(dtype, [BN, DC], c_desc.layout)
    cpe_smem = gl.allocate_shared_memory(dtype, [BN, DR], cpe_desc.layout)
    p_smem = gl.allocate_shared_memory(dtype, [BH, BN], p_layout)
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    fence_async_shared()
    mbarrier.expect(bar, a_desc.block_type.nbytes + ape_desc.block_type.nbytes + c_desc.block_type.nbytes
                    + cpe_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(a_desc, [0, 0], bar, a_smem)
    tma.async_copy_global_to_shared(ape_desc, [0, DC], bar, ape_smem)
    tma.async_copy_global_to_shared(c_desc, [0, 0], bar, c_smem)
    tma.async_copy_global_to_shared(cpe_desc, [0, DC], bar, cpe_smem)
    mbarrier.wait(bar, phase=0)

    s = warpgroup_mma(a_smem, c_smem.permute((1, 0)), gl.zeros([BH, BN], gl.float32, layout=s_layout),
                      use_acc=False, is_async=True)
    s = warpgroup_mma(ape_smem, cpe_smem.permute((1, 0)), s, is_async=True)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    rs = gl.arange(0, BH, layout=gl.SliceLayout(1, s_layout))
    cs = gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
    gl.store(s_ptr + rs[:, None] * BN + cs[None, :], s)

    p_smem.store(s.to(dtype))
    fence_async_shared()
    gl.thread_barrier()
    o = warpgroup_mma(p_smem, c_smem, gl.zeros([BH, DC], gl.float32, layout=o_layout), use_acc=False, is_async=True)
    o = warpgroup_mma_wait(num_outstanding=0, deps=(o,))
    mbarrier.invalidate(bar)
    ro = gl.arange(0, BH, layout=gl.SliceLayout(1, o_layout))
    co = gl.arange(0, DC, layout=gl.SliceLayout(0, o_layout))
    gl.store(o_ptr + ro[:, None] * DC + co[None, :], o)


def smoke_reference(a: torch.Tensor, c: torch.Tensor, dc: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, o) in fp32 with p rounded to the inputs' dtype as the kernel does."""
    s = a.float() @ c.float().T
    return s, s.to(a.dtype).float() @ c[:, :dc].float()


def run_smoke(a: torch.Tensor, c: torch.Tensor, dc: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """a, c [64, dc + 64] bf16 on a Hopper GPU -> (s [64, 64], o [64, dc]) fp32 from smoke_kernel."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    if a.shape != (BLOCK_H, c.shape[1]) or c.shape[0] != BLOCK_N or a.dtype != torch.bfloat16 or not a.is_cuda:
        raise ValueError(f"run_smoke wants bf16 CUDA a [{BLOCK_H}, D], c [{BLOCK_N}, D]; got {a.dtype} "
                         f"{tuple(a.shape)}, {tuple(c.shape)} on {a.device}")
    dr = a.shape[1] - dc
    a_l, ape_l, c_l, cpe_l = _layouts(dc, dr)
    descs = [TensorDescriptor(t, list(t.shape), list(t.stride()), block, lay)
             for t, block, lay in ((a, [BLOCK_H, dc], a_l), (a, [BLOCK_H, dr], ape_l), (c, [BLOCK_N, dc], c_l),
                                   (c, [BLOCK_N, dr], cpe_l))]
    s = torch.empty(BLOCK_H, BLOCK_N, dtype=torch.float32, device=a.device)
    o = torch.empty(BLOCK_H, dc, dtype=torch.float32, device=a.device)
    smoke_kernel[(1,)](*descs, s, o, DC=dc, DR=dr, num_warps=NUM_WARPS)
    return s, o


def smoke_resources(dc: int = 512, dr: int = 64) -> dict:
    """Compile smoke_kernel for sm_90a on any machine: registers, spills, shared memory, its wgmma shapes."""
    from common.ptxas import compile_resources, wgmma_shapes
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {**tile_desc_signature(("a_desc", "ape_desc", "c_desc", "cpe_desc"), dc, dr), "s_ptr": "*fp32",
           "o_ptr": "*fp32"}
    res = compile_resources(GluonASTSource, smoke_kernel, sig, dict(DC=dc, DR=dr), NUM_WARPS, 1,
                            divisible=["s_ptr", "o_ptr"])
    res["wgmma_shapes"] = wgmma_shapes(res.pop("ptx"))
    return res


def smoke_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """a [64, 576] ~ N(0, 1) and c [64, 576] ~ N(0, 1/64), bf16 on the GPU (scores and outputs of order 3)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randn(BLOCK_H, 576, generator=gen, device="cuda").to(torch.bfloat16)
    c = (torch.randn(BLOCK_N, 576, generator=gen, device="cuda") / 8).to(torch.bfloat16)
    return a, c


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gluon_smoke needs a Hopper GPU (TMA and wgmma); on a CPU, "
                         "`python -m phase2_mla.kernel_resources` compiles the Gluon kernels for sm_90a")
    a, c = smoke_inputs()
    s, o = run_smoke(a, c)
    torch.cuda.synchronize()
    rs, ro = smoke_reference(a, c)
    print(f"scores max |diff| {(s - rs).abs().max().item():.3e} (max |s| {rs.abs().max().item():.1f}); "
          f"value GEMM max |diff| {(o - ro).abs().max().item():.3e} (max |o| {ro.abs().max().item():.1f})")


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
