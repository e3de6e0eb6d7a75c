"""What a Triton kernel costs on Hopper -- registers per thread, spills, shared memory -- measured on a CPU machine.

`triton.compile(..., target=GPUTarget("cuda", 90, 32))` lowers a kernel to PTX for a GPU that is not here, and the
ptxas bundled with Triton reports registers per thread and spill stores for sm_90a. Registers decide how many
programs share an SM (65,536 per SM: a 64-thread program at 128 registers fits 8 times, at 112 nine times), which is
often the whole story of a memory-bound kernel's speed. Run it without TRITON_INTERPRET (the interpreter never
compiles).
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path


def hopper_resources(kernel, signature: dict, constexprs: dict, num_warps: int, num_stages: int,
                     divisible=(), maxnreg: int | None = None) -> dict:
    """Compile `kernel` (a @triton.jit function) for sm_90a. signature: runtime argument -> Triton type ("*bf16",
    "i32", "fp32", ...); constexprs: name -> value; divisible: the runtime arguments declared 16-divisible, as Triton
    specializes them at a real launch with aligned pointers and strides; maxnreg: the launch option of that name (a
    register cap ptxas must meet, spilling if it has to). Returns registers, spill_store_bytes,
    shared_bytes, the PTX, ptxas's stderr tail on failure and its wgmma serialisation notes (wgmma_serialized)."""
    from triton.compiler import ASTSource
    return compile_resources(ASTSource, kernel, signature, constexprs, num_warps, num_stages, divisible, maxnreg)


def hopper_resources_subprocess(module: str, kernel: str, signature: dict, constexprs: dict, num_warps: int,
                                num_stages: int, divisible=(), timeout: int = 300) -> dict:
    """`hopper_resources` of `module`.`kernel` in a fresh interpreter with TRITON_INTERPRET=0, from the repository
    root: what a test calls, since its own session runs the kernels under the interpreter (whose functions do not
    compile). Returns registers, spill_store_bytes, shared_bytes and ptxas_error (no PTX); raises with the child's
    stderr if it failed."""
    import json
    import os
    import sys
    code = (f"import json\nfrom common.ptxas import hopper_resources\nimport {module} as m\n"
            f"r = hopper_resources(m.{kernel}, {signature!r}, {constexprs!r}, {num_warps}, {num_stages}, "
            f"divisible={list(divisible)!r})\n"
            "print('RES ' + json.dumps({k: r[k] for k in ('registers', 'spill_store_bytes', 'shared_bytes', "
            "'ptxas_error')}))\n")
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "0"}, cwd=root,
                         capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0 or "RES " not in run.stdout:
        raise RuntimeError(f"compiling {module}.{kernel} for sm_90a failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.split("RES ", 1)[1].splitlines()[0])


def compile_resources(source_cls, kernel, signature: dict, constexprs: dict, num_warps: int, num_stages: int,
                      divisible=(), maxnreg: int | None = None) -> dict:
    """`hopper_resources` for any front end: source_cls is Triton's ASTSource or Gluon's GluonASTSource (a Gluon
    kernel's tensor descriptors are declared as "tensordesc<bf16[64, 512],NVMMASharedLayout(...)>")."""
    import triton
    from triton.backends.compiler import GPUTarget

    sig = {**signature, **{k: "constexpr" for k in constexprs}}
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    k = triton.compile(source_cls(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg} if maxnreg else {})))
    ptx = k.asm["ptx"]
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        r = subprocess.run([str(ptxas), "-v", "--gpu-name=sm_90a", str(src), "-o", str(src.with_suffix(".o"))],
                           capture_output=True, text=True)
    regs = re.findall(r"Used (\d+) registers", r.stderr)
    spills = re.findall(r"(\d+) bytes spill stores", r.stderr)
    # ptxas's C7514-style notes ("wgmma.mma_async instructions are serialized ..."): it then waits for every wgmma
    # before the next, so an overlap written in the source is gone from the machine code
    serialized = [ln.strip() for ln in r.stderr.splitlines() if "serialized" in ln]
    return {"registers": int(regs[0]) if regs else None, "spill_store_bytes": int(spills[0]) if spills else None,
            "shared_bytes": k.metadata.shared, "ptx": ptx, "ptxas_error": r.stderr[-300:] if r.returncode else "",
            "wgmma_serialized": serialized}


def wgmma_shapes(ptx: str) -> dict:
    """{wgmma shape: occurrences} in a kernel's PTX, e.g. {"m64n32k16": 36, "m64n256k16": 4}: the PTX is per thread,
    so each count is one warpgroup's share."""
    shapes = sorted(set(re.findall(r"wgmma\.mma_async\S*?\.(m64n\d+k\d+)\.", ptx)))
    return {m: ptx.count(f".{m}.") for m in shapes}


def ptx_mma_order(ptx: str) -> list[str]:
    """A kernel's tensor-core and synchronisation events in PTX text order, runs collapsed: "wgmma m64n16k16 x32",
    "commit", "wait 0", "bar.sync x2", "ex2 x8" (the softmax), "fence.proxy.async", "tma x2", "mbarrier wait",
    and "loop" at the loop's back edge. Where the overlap shows: an issued-and-committed score GEMM followed by
    the softmax's ex2s with no "wait" between them."""
    pats = [(r"wgmma\.mma_async\S*?\.(m64n\d+k\d+)\.", lambda m: f"wgmma {m.group(1)}"),
            (r"wgmma\.commit_group", lambda m: "commit"),
            (r"wgmma\.wait_group\S*\s+(\d+)", lambda m: f"wait {m.group(1)}"),
            (r"\bbar\.sync\b", lambda m: "bar.sync"), (r"\bex2\.", lambda m: "ex2"),
            (r"fence\.proxy\.async", lambda m: "fence.proxy.async"), (r"cp\.async\.bulk\.tensor", lambda m: "tma"),
            (r"mbarrier\.try_wait", lambda m: "mbarrier wait")]
    events: list[str] = []
    labels = set()
    for line in ptx.splitlines():
        lab = re.match(r"^(\$L__BB\d+_\d+):", line)
        if lab:
            labels.add(lab.group(1))
        back = re.search(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);", line)
        ev = "loop" if back and back.group(1) in labels and line.lstrip().startswith("@") else None
        for pat, name in pats:
            m = re.search(pat, line)
            if m:
                ev = name(m)
                break
        if ev is None:
            continue
        prev = events[-1].rsplit(" x", 1) if events else [""]
        if ev not in ("commit", "loop") and not ev.startswith("wait") and prev[0] == ev:
            events[-1] = f"{ev} x{int(prev[1]) + 1 if len(prev) > 1 else 2}"
        else:
            events.append(ev)
    return events


def programs_per_sm(registers: int, num_warps: int, shared_bytes: int, regs_per_sm: int = 65536,
                    smem_per_sm: int = 228 * 1024, max_warps: int = 64) -> int:
    """Resident programs per Hopper SM, from registers (allocated per warp in units of 256), shared memory and warps."""
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = regs_per_sm // (per_warp * num_warps)
    by_smem = smem_per_sm // max(1, shared_bytes + 1024)  # + the 1 KiB the driver reserves per block
    return max(0, min(by_regs, by_smem, max_warps // num_warps, 32))
