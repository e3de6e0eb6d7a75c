"""Why the seesaw stops near 2.3 TB/s at 128 heads: the same work per program, timed with more and fewer programs.

    python -m phase2_mla.contention_mla [--rounds 5] [--name contention_mla_<tag>]     # a Hopper GPU

At DeepSeek-V3's 128 heads every sequence is two programs (64-head blocks) that stream the SAME latent: the DRAM reads
it once (the second program finds it in the L2), but each program's TMA moves its own copy from the L2 into its SM's
shared memory, so the L2 -> SM traffic is twice the DRAM traffic (B=64, ctx 4K: 604 MB against 302). Each program's
work is identical (64 tiles of 64 tokens x 64 heads) whatever the head count, so the time per tile a program takes
at different numbers of programs, and with programs that share or do not share their latent, says which shared
resource slows them down:

    heads  batch  programs  DRAM bytes  L2->SM bytes
    128     16/32/48/64   32/64/96/128   1x          2x    (two programs a latent)
     64     32/64/128     32/64/128      1x          1x    (one program a latent)

Also measured, same call: the GPU's read bandwidth from the L2 (a buffer that fits it, read over and over by every
SM) and from DRAM (a buffer far larger than the L2), by a plain Triton streaming kernel: a floor for the L2 -> SM
ceiling that the 128-head case's 2x traffic runs into. Writes phase2_mla/results/<name>.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
import triton
import triton.language as tl

# nvidia-smi's reasons for holding the SM clock below its maximum (`nvidia-smi --help-query-gpu`)
REASONS = ("sw_power_cap", "hw_slowdown", "hw_power_brake_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown")
READ_BLOCK = 4096  # fp32 elements a program loads per iteration (16 KB; 8 warps: four 16-byte loads a thread)


@triton.jit
def read_kernel(x_ptr, out_ptr, nprog, ITERS: tl.constexpr, REPS: tl.constexpr, BLOCK: tl.constexpr):
    """In pass r, program p sums slice (p + r) % nprog of x (ITERS BLOCK elements a slice): a streaming read whose
    addresses change every pass, so no pass's loads can be hoisted out of the loop. The loop bounds are constexprs:
    the CPU interpreter cannot take a run-time loop bound (numpy 2 refuses the conversion)."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for r in range(REPS):
        base = x_ptr + ((pid + r) % nprog).to(tl.int64) * (ITERS * BLOCK)
        for i in range(ITERS):
            acc += tl.load(base + i * BLOCK + offs)
    tl.store(out_ptr + pid * BLOCK + offs, acc)


def read_tb_s(total_bytes: int, reps: int, programs_per_sm: int = 4) -> dict:
    """Read bandwidth of `reps` passes over a `total_bytes` fp32 buffer split evenly over programs_per_sm programs an
    SM (median of graph-timed calls)."""
    from phase2_mla.bench_mla import graph_ms
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    progs = sms * programs_per_sm
    iters = max(1, total_bytes // 4 // progs // READ_BLOCK)
    per_prog = iters * READ_BLOCK
    x = torch.ones(progs * per_prog, device="cuda", dtype=torch.float32)
    out = torch.empty(progs * READ_BLOCK, device="cuda", dtype=torch.float32)

    def fn():
        read_kernel[(progs,)](x, out, progs, ITERS=iters, REPS=reps, BLOCK=READ_BLOCK, num_warps=8)

    ms = graph_ms(fn, inner=3, iters=10)
    if out[0].item() != reps * iters:
        raise RuntimeError("read_kernel summed the wrong number of elements")
    nbytes = x.numel() * 4 * reps
    return {"buffer_bytes": x.numel() * 4, "reps": reps, "programs": progs, "ms": ms, "tb_s": nbytes / ms / 1e9,
            **clocks_under(fn)}


def _smi(fields: list[str]) -> list[str] | None:
    import subprocess
    q = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True, timeout=30)
    if q.returncode != 0 or not q.stdout.strip():
        return None
    return [v.strip() for v in q.stdout.strip().splitlines()[0].split(",")]


def clocks_under_graph(fn, inner: int = 20, **kw) -> dict:
    """clocks_under with fn captured `inner` times in one CUDA graph and the graph replayed: a Python launch can take
    longer than a small kernel (the seesaw's wrapper ~tens of us against a 51 us call at 128 heads, B=16), so calls
    launched one by one leave the GPU idle between them and read low power (peer_flashmla_s1210o_h100's small cases)."""
    from phase2_mla.bench_mla import capture
    return clocks_under(capture(fn, inner).replay, **kw)


def clocks_under(fn, samples: int = 5, interval_s: float = 0.08, settle_s: float = 1.2) -> dict:
    """What nvidia-smi reports while fn runs back to back on a background thread: the SM clock (MHz; median, min and
    max of `samples` readings), board power (W, median), the power limit, temperature, and every reason it gave for
    holding the clock below its maximum (`clocks_event_reasons`); {} without nvidia-smi. One reading is a snapshot
    of a clock the driver moves every few ms, hence several. The readings start settle_s after the load: on Ampere and
    newer nvidia-smi's power.draw is the average over the last second, so an earlier reading mixes in the idle GPU
    before the load (a 0.2 s settle read 398-464 W for cases that draw ~690 W: the s1210m runs)."""
    import shutil
    import threading
    import time
    if shutil.which("nvidia-smi") is None:
        return {}
    stop = threading.Event()
    device = torch.cuda.current_device() if torch.cuda.is_available() else None

    def spin():
        if device is not None:  # this thread's CUDA context (Triton's TMA descriptors use the driver API)
            torch.cuda.set_device(device)
            torch.cuda.synchronize()
        while not stop.is_set():
            for _ in range(20):
                fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()

    errors = []

    def guarded():
        try:
            spin()
        except Exception as e:  # noqa: BLE001 -- reported after the join: readings of an idle GPU are no readings
            errors.append(e)
            stop.set()

    th = threading.Thread(target=guarded, daemon=True)
    th.start()
    fields = ["clocks.sm", "power.draw", "enforced.power.limit", "temperature.gpu"] + [
        f"clocks_event_reasons.{r}" for r in REASONS]
    rows = []
    try:
        time.sleep(settle_s)  # into the steady state, and a power average over the load alone
        for _ in range(samples):
            row = _smi(fields) or _smi(fields[:2])  # a driver without the clock-event fields: clock and power
            if row:
                rows.append(row)
            time.sleep(interval_s)
    finally:
        stop.set()
        th.join()
    if errors:
        raise RuntimeError(f"clocks_under: the load thread failed: {errors[0]!r}")
    try:
        mhz = [float(r[0]) for r in rows]
        watts = [float(r[1]) for r in rows]
    except (ValueError, IndexError):
        return {}
    if not rows:
        return {}
    out = {"sm_clock_mhz": statistics.median(mhz), "sm_clock_mhz_min": min(mhz), "sm_clock_mhz_max": max(mhz),
           "power_w": statistics.median(watts), "clock_samples": len(rows)}
    full = [r for r in rows if len(r) == len(fields)]
    if full:
        out.update(power_limit_w=float(full[0][2]), temperature_c=max(float(r[3]) for r in full),
                   clock_limited_by=sorted({n for r in full for n, v in zip(REASONS, r[4:]) if v.lower() == "active"}))
    return out


def contention_case(h: int, b: int, rounds: int, ctx: int = 4096, schedule: str = "seesaw") -> dict:
    """The seesaw `schedule` at (h heads, b sequences, ctx) with one split: checked, then timed `rounds` times."""
    from phase2_mla.bench_mla import check_mla, graph_ms, mla_call, mla_case
    from phase2_mla.mla_decode_gluon import BLOCK_H
    from phase2_mla.mla_decode_gluon_seesaw import SEESAW_BLOCK_N
    case = mla_case(b, h, ctx)
    cfg = dict(backend="gluon", num_splits=1, gluon_schedule=schedule)
    fn = mla_call(case, cfg, ctx)
    err, rag_err, ok = check_mla(case, cfg, fn)
    if not ok:
        raise RuntimeError(f"seesaw wrong at {h} heads, B={b}: err {err:.4f} / ragged {rag_err:.4f}")
    ms = statistics.median(graph_ms(fn, inner=5, iters=10) for _ in range(rounds))
    blocks = -(-h // BLOCK_H)  # head blocks: programs a sequence
    tiles = ctx // SEESAW_BLOCK_N
    kv = case["kv_bytes"]
    tile_bytes = kv // (b * tiles)  # one sequence's tile of latent + rope-key rows
    clocks = clocks_under_graph(fn)
    us_tile = ms * 1e3 / tiles
    # SM clocks a tile at the median clock under load (the clock moves: an estimate, not a counter)
    cycles = {"sm_clocks_per_tile": us_tile * clocks["sm_clock_mhz"]} if "sm_clock_mhz" in clocks else {}
    return {"heads": h, "batch": b, "schedule": schedule, "programs": b * blocks, "us": ms * 1e3,
            "tiles_per_program": tiles, "us_per_tile": us_tile, **cycles, "dram_tb_s": kv / ms / 1e9,
            "l2_to_sm_tb_s": b * blocks * tiles * tile_bytes / ms / 1e9, "max_abs_err": err, **clocks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phase2_mla.contention_mla", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cases", default="128x16,128x32,128x48,128x64,128x64:seesaw_noprefetch,64x32,64x64,"
                                       "64x64:seesaw_prefetch,64x128",
                    help="comma-separated HEADSxBATCH[:schedule] cases (ctx 4K, one split; default schedule seesaw)")
    ap.add_argument("--name", default="contention_mla")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        print("contention_mla needs a Hopper GPU (sm_90): the seesaw kernel is Gluon wgmma / TMA code")
        return 1
    from common.bench import write_result
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    reads = {"l2_resident": read_tb_s(l2 // 4, reps=40), "dram": read_tb_s(2 << 30, reps=1)}
    for k, r in reads.items():
        print(f"read {k}: {r['buffer_bytes'] / 2**20:.0f} MiB x {r['reps']}: {r['tb_s']:.2f} TB/s, SM clock "
              f"{r.get('sm_clock_mhz', '?')} MHz", flush=True)
    cases = []
    for c in args.cases.split(","):
        shape, _, schedule = c.partition(":")
        h, b = (int(v) for v in shape.split("x"))
        r = contention_case(h, b, args.rounds, schedule=schedule or "seesaw")
        cases.append(r)
        print(f"{h} heads B={b} {r['schedule']}: {r['programs']} programs, {r['us']:.1f} us, "
              f"{r['us_per_tile']:.3f} us a tile (~{r.get('sm_clocks_per_tile', 0):.0f} clocks), DRAM {r['dram_tb_s']:.2f} TB/s, L2->SM {r['l2_to_sm_tb_s']:.2f} "
              f"TB/s, SM clock {r.get('sm_clock_mhz', '?')} MHz ({r.get('sm_clock_mhz_min', '?')}-"
              f"{r.get('sm_clock_mhz_max', '?')}), {r.get('power_w', '?')} W of "
              f"{r.get('power_limit_w', '?')}, {r.get('temperature_c', '?')} C, limited by "
              f"{r.get('clock_limited_by', '?')}", flush=True)
    write_result("phase2_mla", args.name, {"reads": reads, "cases": cases, "l2_bytes": l2})
    return 0


if __name__ == "__main__":
    sys.exit(main())
