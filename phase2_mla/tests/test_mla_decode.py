"""MLA paged decode (Triton; the CPU interpreter here) against the PyTorch reference, and the paged latent cache."""
import pytest
import torch

from common import artifacts
from common.config import get_preset
from phase2_mla.mla_decode import (check_args, default_block_h, default_num_splits, mla_paged_decode,
                                   mla_paged_decode_ref)
from phase2_mla.paged_latent_cache import PagedLatentCache

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def make_case(lens, page, h=5, dc=64, dr=16, dtype=torch.float32, seed=0, device=DEV, spare=3):
    """A paged cache whose blocks are a random permutation of physical ids (plus spare unused blocks)."""
    g = torch.Generator().manual_seed(seed)
    b, max_blocks = len(lens), -(-max(lens) // page)
    nblk = b * max_blocks + spare
    kv = torch.randn(nblk, page, dc + dr, generator=g).to(device, dtype)
    bt = torch.randperm(nblk, generator=g)[:b * max_blocks].view(b, max_blocks).to(device, torch.int32)
    q_lat = torch.randn(b, h, dc, generator=g).to(device, dtype)
    q_pe = torch.randn(b, h, dr, generator=g).to(device, dtype)
    return q_lat, q_pe, kv, bt, torch.tensor(lens, dtype=torch.int32, device=device)


@pytest.mark.parametrize("lens, page", [([1, 23, 50], 7), ([16, 16], 16), ([3, 65], 1), ([40], 64)],
                         ids=["awkward-page-7", "exact-pages", "page-of-1", "one-partial-page"])
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("swap_ab", [False, True], ids=["heads-x-tokens", "swap-ab"])
def test_kernel_matches_reference(lens, page, num_splits, swap_ab):
    q_lat, q_pe, kv, bt, sl = make_case(lens, page, seed=len(lens) + page)
    out = mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.13, num_splits=num_splits, block_n=8, swap_ab=swap_ab)
    ref = mla_paged_decode_ref(q_lat, q_pe, kv, bt, sl, scale=0.13)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dv_split, dc", [(2, 64), (2, 48), (4, 64)], ids=["halves", "halves-padded", "quarters"])
def test_value_split_matches_reference(dv_split, dc):
    """dv_split=2 splits the latent into this program's value half and the other half (48 = 32 + 16 padded);
    4 re-reads its quarter. Both at 2 head blocks."""
    q_lat, q_pe, kv, bt, sl = make_case([19, 6], 4, h=3, dc=dc, seed=11)
    out = mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.13, num_splits=2, block_n=8, dv_split=dv_split,
                           block_h=2)
    torch.testing.assert_close(out, mla_paged_decode_ref(q_lat, q_pe, kv, bt, sl, scale=0.13), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="dv_split"):
        mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.13, dv_split=3)
    with pytest.raises(ValueError, match="swap_ab"):
        mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.13, dv_split=dv_split, swap_ab=True)


@pytest.mark.parametrize("dc, dr", [(64, 16), (48, 8)], ids=["pow2-dims", "padded-dims"])
@pytest.mark.parametrize("swap_ab", [False, True], ids=["heads-x-tokens", "swap-ab"])
def test_unwritten_slots_full_of_nan_are_never_read(dc, dr, swap_ab):
    """Slots past each sequence's end (and unused blocks) hold NaN, as fresh torch.empty memory may: a kernel that
    lets one of them into the value sum returns NaN."""
    lens, page = [13, 32, 5], 8
    q_lat, q_pe, kv, bt, sl = make_case(lens, page, h=4, dc=dc, dr=dr, seed=21)
    valid = torch.zeros(kv.shape[:2], dtype=torch.bool, device=kv.device)
    for b, n in enumerate(lens):
        t = torch.arange(n, device=kv.device)
        valid[bt[b, t // page].long(), t % page] = True
    kv[~valid] = float("nan")
    out = mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.1, num_splits=2, block_n=8, swap_ab=swap_ab)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, mla_paged_decode_ref(q_lat, q_pe, kv, bt, sl, scale=0.1), atol=2e-5, rtol=1e-4)


def test_kernel_uses_the_block_table():
    q_lat, q_pe, kv, bt, sl = make_case([30, 30], 4, seed=9)
    out = mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.2, num_splits=2, block_n=8)
    shuffled = bt[:, torch.randperm(bt.shape[1], generator=torch.Generator().manual_seed(0))].contiguous()
    wrong = mla_paged_decode_ref(q_lat, q_pe, kv, shuffled, sl, scale=0.2)
    assert (out - wrong).abs().max() > 1e-3


@pytest.mark.parametrize("swap_ab", [False, True], ids=["heads-x-tokens", "swap-ab"])
@pytest.mark.parametrize("num_splits", [1, 2])
def test_odd_head_count_and_dims(swap_ab, num_splits):
    """3 heads in a block of 4 and 48 + 8 dims padded to 64 + 16: the masked rows / columns are never stored."""
    q_lat, q_pe, kv, bt, sl = make_case([11, 5], 3, h=3, dc=48, dr=8, seed=4)
    out = mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.1, num_splits=num_splits, block_n=4, swap_ab=swap_ab,
                           block_h=2)  # two head blocks, the second half empty
    torch.testing.assert_close(out, mla_paged_decode_ref(q_lat, q_pe, kv, bt, sl, scale=0.1), atol=2e-5, rtol=1e-4)


def test_bad_inputs_raise_clear_errors():
    q_lat, q_pe, kv, bt, sl = make_case([5, 9], 4, device="cpu")
    with pytest.raises(ValueError, match="block_table must be int32"):
        check_args(q_lat, q_pe, kv, bt.long(), sl)
    with pytest.raises(ValueError, match="kv_cache must be"):
        check_args(q_lat, q_pe, kv[..., :-1], bt, sl)
    with pytest.raises(ValueError, match="share one float dtype"):
        check_args(q_lat.double(), q_pe, kv, bt, sl)
    with pytest.raises(ValueError, match="seq_lens must be int32"):
        check_args(q_lat, q_pe, kv, bt, sl[:1])
    with pytest.raises(ValueError, match="at least one cached token"):
        mla_paged_decode(q_lat, q_pe, kv, bt, torch.tensor([0, 3], dtype=torch.int32), 0.1)
    with pytest.raises(ValueError, match="need more than block_table"):
        mla_paged_decode(q_lat, q_pe, kv, bt, torch.tensor([5, 99], dtype=torch.int32), 0.1)
    with pytest.raises(ValueError, match="need more than block_table"):  # check_args itself (the Gluon wrapper's)
        check_args(q_lat, q_pe, kv, bt, torch.tensor([5, 99], dtype=torch.int32))
    with pytest.raises(ValueError, match="contiguous"):
        check_args(q_lat, q_pe, kv, torch.cat([bt, bt], 1)[:, ::2], sl)
    with pytest.raises(ValueError, match="num_splits"):
        mla_paged_decode(q_lat, q_pe, kv, bt, sl, 0.1, num_splits=0)


def test_default_split_count():
    assert default_num_splits(64, 8, 4096) == 1  # 512 programs already fill 132 SMs
    assert default_num_splits(1, 1, 32768) == 64  # one sequence: split its history
    assert default_num_splits(2, 1, 300) == 1  # never splits shorter than 256 tokens
    assert default_num_splits(64, 2, 4096) == 1  # 128 programs nearly fill 132 SMs: no split (H100 sweep winner)
    assert default_num_splits(64, 1, 4096) == 5  # 64 programs: about two per SM
    assert default_num_splits(64, 2, 4096, num_sms=264) == 5  # a twice-bigger GPU would split again


def test_gluon_num_splits_keeps_the_grid_to_one_wave():
    """The Gluon kernels take a whole SM per program, so their splits fill one wave and no more (H100: 16 heads at
    B=64 with 2 splits 109.4 us, with 1 124.6; the Triton rule's 5 gave 124.1)."""
    from phase2_mla.mla_decode import gluon_num_splits
    assert gluon_num_splits(64, 1, 4096) == 2  # 64 programs -> 128
    assert gluon_num_splits(64, 2, 4096) == 1  # 128 programs already one wave
    assert gluon_num_splits(64, 8, 4096) == 1  # more than a wave: never split
    assert gluon_num_splits(1, 2, 32768) == 64  # one sequence: 66 would fit, capped at 64
    assert gluon_num_splits(1, 2, 1000) == 3  # no split shorter than 256 tokens
    assert gluon_num_splits(8, 1, 4096, num_sms=132) == 16  # 128 programs


def test_seesaw_prefetches_where_head_blocks_share_the_latent():
    """The default seesaw's L2 prefetch: one tile ahead with two or more head blocks per sequence (128 heads: the
    second block's loads find the first's lines), none with one (16 heads: bandwidth-bound, it only adds L2
    traffic); the explicit variants override it."""
    from phase2_mla.mla_decode_gluon import seesaw_extra, seesaw_prefetch_rule
    assert [seesaw_prefetch_rule(n) for n in (1, 2, 8)] == [0, 1, 1]
    assert seesaw_extra("seesaw", None, 1)["L2_AHEAD"] == 0 and seesaw_extra("seesaw", None, 2)["L2_AHEAD"] == 1
    assert seesaw_extra("seesaw_noprefetch", None, 2)["L2_AHEAD"] == 0
    assert seesaw_extra("seesaw_prefetch", None, 1)["L2_AHEAD"] == 1
    assert seesaw_extra("serial", None, 2) == {}


def test_default_block_h_follows_head_count():
    assert default_block_h(128) == 64 and default_block_h(64) == 64
    assert default_block_h(16) == 16 and default_block_h(5) == 16


def test_paged_cache_on_phase1_block_tables_decodes_like_contiguous():
    """End to end: the absorbed model on a paged cache whose blocks come from phase 1 (through the seam)."""
    from common.deepseek import DeepseekV3ForCausalLM, LatentCache, generate_greedy
    from phase2_mla.hf_oracle import make_pair

    cfg = get_preset("deepseek-v3-tiny")
    _, state = make_pair(cfg, seed=3)
    model = DeepseekV3ForCausalLM.from_state_dict(cfg, state, absorbed=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    manager = artifacts.get("allocator.block_table_ref")(num_blocks=8, block_size=3)
    paged = PagedLatentCache(cfg, 2, 10, block_size=3, block_manager=manager)
    toks = generate_greedy(model, ids, 4, paged)
    assert torch.equal(toks, generate_greedy(model, ids, 4, LatentCache(cfg, 2, 10)))
    assert manager.num_tokens(0) == 9 and len(manager.block_table(1)) == 3
    assert "PagedLatentCache(layers=2, blocks=8 x 3 tokens" in repr(paged)


def test_paged_cache_errors():
    cfg = get_preset("deepseek-v3-tiny")
    with pytest.raises(ValueError, match="block_size"):
        PagedLatentCache(cfg, 1, 8, block_size=0)
    cache = PagedLatentCache(cfg, 1, 4, block_size=2)
    with pytest.raises(RuntimeError, match="cache full"):
        cache.update(0, torch.randn(1, 5, 64), torch.randn(1, 5, 16))


@pytest.mark.gpu
@pytest.mark.parametrize("lens, page", [([1, 77, 300, 1025], 64), ([513, 4096, 33], 16)])
def test_kernel_bf16_at_deepseek_dims(lens, page):
    q_lat, q_pe, kv, bt, sl = make_case(lens, page, h=128, dc=512, dr=64, dtype=torch.bfloat16, seed=7)
    ref = mla_paged_decode_ref(q_lat, q_pe, kv, bt, sl, scale=192 ** -0.5)
    for cfg in (dict(block_h=64, block_n=16, num_warps=8), dict(block_h=32, block_n=32, num_splits=5),
                dict(block_h=64, block_n=64, num_warps=8, swap_ab=True), dict(block_h=32, block_n=64, num_warps=8,
                                                                              swap_ab=True, num_splits=3),
                dict(block_h=64, block_n=32, num_warps=8, dv_split=2, num_splits=1)):
        out = mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=192 ** -0.5, **cfg)
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2, msg=lambda m: f"{cfg}: {m}")


def sm90_compile(code: str):
    """Run `code` (which prints one JSON line last) in a fresh interpreter without TRITON_INTERPRET: an sm_90a
    compile on this machine (the interpreter never compiles). Returns the parsed JSON."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_kernel_compiles_for_hopper_on_cpu_and_reports_resources():
    """The kernel lowers to sm_90a PTX here (no GPU) and ptxas reports its registers: the basis of the README's
    spill analysis. Runs in a subprocess because the interpreter (set for this suite) never compiles."""
    row = sm90_compile("import json; from phase2_mla.kernel_resources import resources; "
                       "print(json.dumps(resources(16, 16, 4, 2, page=16)))")
    assert 0 < row["registers"] <= 255 and row["shared_bytes"] > 0 and not row["ptxas_error"]
    assert row["mma_sync"] + row["wgmma"] > 0  # tensor-core instructions were generated


def test_gluon_backend_refuses_what_it_cannot_run():
    """backend="gluon" is Hopper-only (bf16 / fp16, latent 512 + rope 64, pages of 64k): anything else is a clear
    ValueError, never a silent fallback; an unknown backend name is one too."""
    q_lat, q_pe, kv, bt, sl = make_case([5, 9], 8, device="cpu")
    with pytest.raises(ValueError, match="gluon"):
        mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.1, backend="gluon")
    with pytest.raises(ValueError, match="backend"):
        mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.1, backend="cuda")
    with pytest.raises(ValueError, match="schedule"):  # an unknown schedule, before the device check
        mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.1, backend="gluon", gluon_schedule="bogus")
    with pytest.raises(ValueError, match="gluon_schedule"):  # the Triton backend has no such loop
        mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.1, gluon_schedule="pipelined")


def test_auto_backend_takes_gluon_only_where_it_runs_and_no_triton_knob_is_set(monkeypatch):
    """backend="auto" (the default): the CPU (and any non-Hopper input) gets Triton; where use_gluon says yes, the
    Gluon kernel runs unless a Triton layout knob was asked for, which then keeps Triton."""
    from phase2_mla import mla_decode as md
    q_lat, q_pe, kv, bt, sl = make_case([5, 9], 8, device="cpu")
    assert not md.use_gluon(q_lat, kv)
    ref = mla_paged_decode_ref(q_lat, q_pe, kv, bt, sl, scale=0.1)
    torch.testing.assert_close(mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.1, block_n=8), ref,
                               atol=1e-4, rtol=1e-4)
    calls = []
    monkeypatch.setattr(md, "use_gluon", lambda q, kv: True)
    import phase2_mla.mla_decode_gluon as gk
    monkeypatch.setattr(gk, "supported", lambda q, kv: None)
    monkeypatch.setattr(gk, "mla_paged_decode_gluon", lambda *a, **k: calls.append(k) or ref)
    monkeypatch.setattr(md.torch.cuda, "get_device_properties", lambda dev: type("P", (), {"multi_processor_count": 4}))
    assert mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.1) is ref and calls[-1]["schedule"] == md.DEFAULT_GLUON_SCHEDULE
    n = len(calls)
    out = mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.1, block_n=8)  # a Triton knob: Triton runs
    assert len(calls) == n
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_gluon_kernel_compiles_for_hopper_computing_each_score_tile_once():
    """mla_decode_gluon's kernel lowers to sm_90a here (no GPU): no spills, within the 227 KB of shared memory a
    block may take, and per warpgroup 36 m64n32k16 score wgmmas (576 deep / 16; 32 = half the 64-token tile: the
    warpgroups split the tile instead of both computing it, as the Triton kernel's 72 do) and 4 m64n256k16 value
    wgmmas (64 tokens / 16; 256 = half the 512 value dims)."""
    code = ("import json; from phase2_mla.mla_decode_gluon import hopper_resources_gluon as r; "
            "print(json.dumps([r(page=64), r(page=128, num_splits=3)]))")
    for row in sm90_compile(code):
        assert not row["ptxas_error"] and row["spill_store_bytes"] == 0 and row["registers"] <= 255, row
        assert row["shared_bytes"] <= 227 * 1024, row
        assert row["wgmma_shapes"] == {"m64n32k16": 36, "m64n256k16": 4}, row
        assert row["tma_loads"] >= 4, row  # q, q_pe, then the latent and rope key of a tile
        # the synchronisation as emitted: a wait on q and on the ring, one wgmma wait per GEMM, the three async
        # fences (barrier init, zeroed partial tile, p before the value GEMM), and every expect-tx = one full box
        # (q + q_pe = one KV tile = 64 x 576 bf16 = 73,728 bytes)
        assert row["sync"] == {"mbarrier_waits": 2, "wgmma_waits": 2, "async_fences": 3,
                               "expect_tx_bytes": [73728], "wgmma_commits": 3}, row
        assert row["wgmma_serialized"] == [], row


@pytest.mark.slow
def test_gluon_pipelined_kernel_compiles_for_hopper_with_the_overlap_in_the_ptx():
    """schedule="pipelined" (mla_decode_gluon_pipelined.py) lowers to sm_90a: no spills, <= 255 registers, within
    the 227 KB of shared memory (q + a 4-slot ring of 32-token tiles + 2 p buffers), per warpgroup 2 x 36 m64n16k16
    score wgmmas (the prologue's S_0 and the loop's S_{t+1}: 16 = half the 32-token tile) and 2 m64n256k16 value
    wgmmas (32 tokens / 16). The PTX of the loop issues and commits S_{t+1}, then runs the softmax (ex2), the p
    fence, the p barrier and the TMA refill, then issues O_t, and only then waits (wait_group 0): the overlap is in
    the emitted code. ptxas serialises no wgmma (it would for a group left in flight across the back edge)."""
    code = ("import json; from phase2_mla.mla_decode_gluon import hopper_resources_gluon as r; "
            "print(json.dumps([r(page=64, schedule='pipelined'), r(page=128, num_splits=3, schedule='pipelined')]))")
    for row in sm90_compile(code):
        assert not row["ptxas_error"] and row["spill_store_bytes"] == 0 and row["registers"] <= 255, row
        assert row["shared_bytes"] <= 227 * 1024, row
        assert row["wgmma_shapes"] == {"m64n16k16": 72, "m64n256k16": 2}, row
        # waits: q, tile 0, the loop's tile t + 1; one wgmma wait for S_0 and one per iteration; fences: barrier
        # init, zeroed partial tile (prologue and loop copies), p; expect-tx: q (73,728) and a 32-token tile
        assert row["sync"] == {"mbarrier_waits": 3, "wgmma_waits": 2, "async_fences": 4,
                               "expect_tx_bytes": [36864, 73728], "wgmma_commits": 5}, row
        assert row["wgmma_serialized"] == [], row
        order = row["mma_order"]
        loop = order[:order.index("loop")]
        s_next = max(i for i in range(len(loop) - 3) if loop[i:i + 4] == ["wgmma m64n16k16 x32", "commit",
                                                                           "wgmma m64n16k16 x4", "commit"])
        o_t = loop.index("wgmma m64n256k16 x2")
        between = loop[s_next + 4:o_t]
        assert not any(e.startswith("wait") for e in between), order  # S_{t+1} still in flight during ...
        assert any(e.startswith("ex2") for e in between), order  # ... the softmax,
        assert "fence.proxy.async" in between and "tma" in between, order  # the p hand-off and the TMA refill
        assert loop[o_t + 1:o_t + 3] == ["commit", "wait 0"], order  # then O_t, and one wait for both


def seesaw_rows(schedule: str) -> list[dict]:
    """hopper_resources_gluon of a seesaw schedule (page 64 / 1 split and page 128 / 3 splits), each row checked for
    what both seesaws share: no spills within 255 registers, shared memory within the 232,448 bytes a block may take,
    m64n64k16 x 36 score wgmmas at 3 sites and m64n256k16 x 4 value wgmmas at 6 (3 with p in registers), no ptxas
    wgmma serialisation."""
    code = ("import json; from phase2_mla.mla_decode_gluon import hopper_resources_gluon as r; "
            f"print(json.dumps([r(page=64, schedule={schedule!r}), r(page=128, num_splits=3, schedule={schedule!r})]))")
    rows = sm90_compile(code)
    for row in rows:
        assert not row["ptxas_error"] and row["spill_store_bytes"] == 0 and row["registers"] <= 255, row
        assert row["shared_bytes"] <= 232448, row
        assert row["wgmma_shapes"] == {"m64n64k16": 108, "m64n256k16": 24}, row
        assert row["wgmma_a_in_registers"] == {"m64n256k16": 12}, row
        assert row["wgmma_serialized"] == [], row
    return rows


@pytest.mark.slow
def test_gluon_seesaw_kernel_compiles_for_hopper_with_whole_score_tiles_per_warpgroup():
    """schedule="seesaw" (mla_decode_gluon_seesaw.py, two warp_specialize partitions of 4 warps) lowers to sm_90a:
    no spills (<= 255 registers: the O half is 128 a thread), within the 232,448 bytes of shared memory a block may
    take (q + two 72 KB KV slots, p written over the rope key). Each warpgroup computes WHOLE 64 x 64 score tiles:
    m64n64k16 x 36 at 3 sites (WG0's loop and its odd-tail tile, WG1's loop) and no m64n32k16; the value GEMM is
    m64n256k16 x 4 at 6 sites, 3 of them with the warpgroup's own p as the A operand in registers. ptxas serialises
    no wgmma. The PTX has WG1's overlap: its score GEMM committed, then (after waiting for WG0's p) P_a V_a issued,
    then one wait_group 1 (the scores only) and the softmax's ex2s and the p hand-off with P_a V_a still in flight."""
    for row in seesaw_rows("seesaw"):
        # mbarrier waits: q (2 partitions), the KV shares (2 per score GEMM site), p ready (3 sites), l (2), the
        # other warpgroup's KV share before a value GEMM over it (3 sites);
        # wgmma waits: WG0 5, WG1 4; fences: barrier init, zeroed halves (2 per score site), p hand-off (3 sites);
        # expect-tx: q (73,728), a latent half (32,768), a latent half + the rope key (40,960)
        assert row["sync"] == {"mbarrier_waits": 16, "wgmma_waits": 9, "async_fences": 10,
                               "expect_tx_bytes": [32768, 40960, 73728], "wgmma_commits": 15}, row
        order = row["mma_order"]
        assert order.count("wait 1") == 1, order
        w1 = order.index("wait 1")
        assert order[w1 - 8:w1] == ["wgmma m64n64k16 x4", "commit", "mbarrier wait", "ex2 x2", "bar.sync",
                                    "mbarrier wait", "wgmma m64n256k16 x4", "commit"], order
        # S_b (its rope part) committed; WG0's P_a and V_a,R's share waited; P_a V_a,R issued behind S_b
        handoff = order[w1 + 1:order.index("wait 0", w1)]
        assert "ex2 x34" in handoff and "fence.proxy.async" in handoff, order  # softmax_b + publish in its shadow


@pytest.mark.slow
def test_gluon_seesaw_prefetches_each_tile_into_the_l2_a_pair_ahead():
    """The default seesaw asks the L2 for every tile two tiles before its TMA load: one 36 KB
    `cp.async.bulk.prefetch.L2` per warpgroup share (prologue: tiles 2 and 3, both shares; each partition's loop:
    its two shares), nothing else changed -- the same wgmmas, TMA loads and barriers as seesaw_noprefetch, which
    has none."""
    rows = sm90_compile("import json; from phase2_mla.mla_decode_gluon import hopper_resources_gluon as r; "
                        "print(json.dumps([r(schedule='seesaw'), r(schedule='seesaw_noprefetch')]))")
    pf, base = rows
    assert pf["l2_prefetches"] == 8 and base["l2_prefetches"] == 0, rows
    assert "cp.async.bulk.prefetch.L2.global [%rd" in pf["ptx_prefetch_line"], rows
    for k in ("wgmma_shapes", "wgmma_a_in_registers", "tma_loads", "sync", "wgmma_serialized"):
        assert pf[k] == base[k], k
    assert pf["spill_store_bytes"] == 0 and pf["registers"] <= 255, pf


@pytest.mark.slow
def test_gluon_chunked_seesaw_waits_for_each_64_column_box_before_its_score_wgmma():
    """schedule="seesaw_chunked" is the seesaw kernel with the latent in [64, 64] TMA boxes, each on its own
    mbarrier (8 a tile instead of 2): same wgmmas, registers and shared memory bounds as the seesaw, and at each
    of the 3 score GEMM sites every box's wait is followed by its own m64n64k16 x4 (the GEMM starts as the first
    64 columns land, FlashMLA's order), then the rope key's."""
    for row in seesaw_rows("seesaw_chunked"):
        # TMA: q (2 copies) + its rope key, the first two tiles (16 boxes + 2 rope keys), each warpgroup's two
        # shares in the loop (8 boxes + 1 rope key each); waits: q 2, 8 boxes at each score site, p ready 3, l 2,
        # a whole share (4 boxes) before each value GEMM over the other warpgroup's share (3 sites)
        assert row["tma_loads"] == 39, row
        assert row["sync"]["mbarrier_waits"] == 2 + 3 * 8 + 3 + 2 + 3 * 4, row
        assert row["sync"]["expect_tx_bytes"] == [8192, 16384, 73728], row  # a box, a box + the rope key, q
        order = row["mma_order"]
        box_then_mma = [i for i, e in enumerate(order) if e.startswith("mbarrier wait")  # "x2": q's, then a box's
                        and "wgmma m64n64k16 x4" in order[i + 1:i + 5]
                        and "mbarrier wait" not in order[i + 1:order.index("wgmma m64n64k16 x4", i)]]
        assert len(box_then_mma) >= 3 * 8, order


@pytest.mark.slow
def test_gluon_smoke_kernel_compiles_with_the_mla_kernels_mma_shapes():
    """gluon_smoke.py (the MLA kernel's TMA / wgmma / shared-p plumbing on one tile, a debugging ladder for the
    GPU) lowers to sm_90a with the same wgmma shapes as the MLA kernel, so it exercises the same code paths."""
    row = sm90_compile("import json; from phase2_mla.gluon_smoke import smoke_resources as r; print(json.dumps(r()))")
    assert not row["ptxas_error"] and row["spill_store_bytes"] == 0, row
    assert row["wgmma_shapes"] == {"m64n32k16": 36, "m64n256k16": 4}, row


@pytest.mark.gpu
def test_gluon_smoke_tile_matches_torch():
    """Rung 1 of the ladder: one tile's scores (a @ c^T over latent + rope, two chained async wgmmas, each
    warpgroup half the columns) and value GEMM (p through shared memory, each warpgroup half the latent dims)."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("Gluon wgmma / TMA kernels are built for Hopper (sm_90)")
    from phase2_mla.gluon_smoke import run_smoke, smoke_inputs, smoke_reference

    a, c = smoke_inputs(seed=5)
    s, o = run_smoke(a, c)
    rs, ro = smoke_reference(a, c)
    torch.testing.assert_close(s, rs, atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(o, ro, atol=2e-1, rtol=2e-2)  # p rounded to bf16 on both sides; fp32 sums differ


@pytest.mark.gpu
@pytest.mark.parametrize("lens, page, h", [([64], 64, 64), ([1], 64, 64), ([128], 64, 64),  # simplest first
                                           ([1, 77, 300, 1025], 64, 128), ([513, 4096, 33, 64], 128, 128),
                                           ([70, 200], 64, 16), ([129, 5], 64, 100), ([32, 33, 160], 64, 64),
                                           ([192, 256, 255, 320, 65], 64, 64)],
                         ids=["one-full-tile", "one-token", "two-tiles", "ragged-page64", "long-page128", "16-heads",
                              "100-heads", "half-page-edges", "pairs-and-odd-tails"])
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("schedule", ["serial", "pipelined", "seesaw", "seesaw_noprefetch", "seesaw_prefetch",
                                      "seesaw_chunked"])
def test_gluon_kernel_matches_reference(lens, page, h, num_splits, schedule):
    """The Gluon Hopper kernel against the fp32 reference at DeepSeek-V3's latent dims: partial last tiles, one
    token, several splits (some empty for short sequences), head counts that are not a multiple of its 64."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon MLA kernel is built for Hopper (sm_90)")
    q_lat, q_pe, kv, bt, sl = make_case(lens, page, h=h, dc=512, dr=64, dtype=torch.bfloat16, seed=11)
    ref = mla_paged_decode_ref(q_lat, q_pe, kv, bt, sl, scale=192 ** -0.5)
    out = mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=192 ** -0.5, num_splits=num_splits, backend="gluon",
                           gluon_schedule=schedule)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["seesaw"])
def test_gluon_kernel_follows_a_running_max_that_jumps(schedule):
    """Scores that jump far past the running max partway through a sequence (some tiles' latents scaled up 5-16x),
    so the max moves after the first tile and the rescale runs in both of the seesaw's warpgroups (random inputs
    barely move it after tile 0). A lazily rescaling seesaw (FlashAttention-4's threshold of 8 in log2 units) was
    tried against this test and measured slower: 143.9 vs 138.0 us at 128 heads (H100,
    results/ab_seesaw_s1209j_h100.json)."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon MLA kernel is built for Hopper (sm_90)")
    q_lat, q_pe, kv, bt, sl = make_case([1000, 300, 129], 64, h=128, dc=512, dr=64, dtype=torch.bfloat16, seed=7)
    for b, tiles in ((0, (3, 9, 14)), (1, (2,)), (2, (1,))):  # tile 1 of seq 2: WG1's, the odd tail is WG0's
        for t in tiles:
            blk = bt[b, t]
            kv[blk] = kv[blk] * (2.0 + t)
    ref = mla_paged_decode_ref(q_lat, q_pe, kv, bt, sl, scale=0.07)
    for splits in (1, 2):
        out = mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.07, num_splits=splits, backend="gluon",
                               gluon_schedule=schedule)
        torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["serial", "pipelined", "seesaw", "seesaw_noprefetch", "seesaw_prefetch",
                                      "seesaw_chunked"])
def test_gluon_kernel_never_reads_unwritten_slots_full_of_nan(schedule):
    """Slots past each sequence's end (inside its last page) hold NaN: the kernel masks their scores and zeroes
    their latent rows before p @ c, so the output stays finite and equal to the reference."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon MLA kernel is built for Hopper (sm_90)")
    # 40: a partial first (and last) 32-token tile of the pipelined ring; seesaw: 100 = a partial last tile of WG1
    # (2 tiles), 191 = of WG0 (3 tiles, the odd tail)
    lens, page = [1, 100, 191, 40], 64
    q_lat, q_pe, kv, bt, sl = make_case(lens, page, h=128, dc=512, dr=64, dtype=torch.bfloat16, seed=3)
    for b, n in enumerate(lens):
        for t in range(n, bt.shape[1] * page):
            kv[bt[b, t // page], t % page] = float("nan")
    ref = mla_paged_decode_ref(q_lat, q_pe, kv, bt, sl, scale=0.07)
    for splits in (1, 2, 3):
        out = mla_paged_decode(q_lat, q_pe, kv, bt, sl, scale=0.07, num_splits=splits, backend="gluon",
                               gluon_schedule=schedule)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("schedule, block_n, stages, c_cols, warps", [("serial", 64, 2, 512, 8),
                                                                       ("pipelined", 32, 4, 512, 8),
                                                                       ("seesaw", 64, 2, 256, 4),
                                                                       ("seesaw_noprefetch", 64, 2, 256, 4),
                                                                       ("seesaw_chunked", 64, 2, 64, 4)])
def test_gluon_wrapper_launches_what_the_kernel_expects(monkeypatch, schedule, block_n, stages, c_cols, warps):
    """The host side of mla_decode_gluon on the CPU (the kernel itself needs a Hopper GPU): a stand-in kernel
    records the launch; the grid, the TMA descriptors' tensors and block shapes, the strides and the merge match
    what the kernel indexes, for one split (output written in place) and three (fp32 partials + the merge), for
    each schedule (the pipelined one: 32-token tile boxes, a 4-slot ring, its own kernel; the seesaw: latent boxes
    of half a row (each warpgroup loads its half), 4 launch warps + its 4-warp worker partition)."""
    from phase2_mla import mla_decode, mla_decode_gluon as gk, mla_decode_gluon_pipelined as pk
    from phase2_mla import mla_decode_gluon_seesaw as sk

    launches, merges = [], []

    class Stub:
        def __init__(self, sink):
            self.sink = sink

        def __getitem__(self, grid):
            return lambda *a, **kw: self.sink.append((grid, a, kw))

    other = []
    monkeypatch.setattr(gk, "mla_decode_gluon_kernel", Stub(launches if schedule == "serial" else other))
    monkeypatch.setattr(pk, "mla_decode_gluon_pipelined_kernel", Stub(launches if schedule == "pipelined" else other))
    monkeypatch.setattr(sk, "mla_decode_gluon_seesaw_kernel",
                        Stub(launches if schedule.startswith("seesaw") else other))
    monkeypatch.setattr(mla_decode, "mla_merge_kernel", Stub(merges))
    b, h, page = 3, 100, 128
    q_lat, q_pe, kv, bt, sl = make_case([5, 300, 129], page, h=h, dc=512, dr=64, dtype=torch.bfloat16, device="cpu")
    for splits in (1, 3):
        launches.clear(), merges.clear()
        out = gk.mla_paged_decode_gluon(q_lat, q_pe, kv, bt, sl, scale=0.1, num_splits=splits, check=False,
                                        schedule=schedule)
        (grid, a, kw), = launches
        assert grid == (2, splits, b) and out.shape == (b, h, 512) and out.dtype == torch.bfloat16
        q_desc, qpe_desc, c_desc, pe_desc, bt_arg, sl_arg, o_part, lse = a[:8]
        assert q_desc.block_shape == [64, 512] and qpe_desc.block_shape == [64, 64]
        assert c_desc.block_shape == [block_n, c_cols] and pe_desc.block_shape == [block_n, 64] and not other
        assert q_desc.shape == [b * h, 512] and c_desc.shape == pe_desc.shape == [kv.shape[0] * page, 576]
        assert c_desc.base.data_ptr() == kv.data_ptr() and q_desc.base.data_ptr() == q_lat.data_ptr()
        assert bt_arg is bt and sl_arg is sl and a[9] == bt.stride(0) and a[-1] == h
        assert kw["PAGE"] == page and kw["NUM_SPLITS"] == splits and kw["num_warps"] == warps
        assert kw["BLOCK_N"] == block_n and kw["STAGES"] == stages
        if schedule.startswith("seesaw"):  # the cache itself (the L2 prefetch's addresses) and the distance
            assert kw["kv_ptr"].data_ptr() == kv.data_ptr() and kw["kv_ptr"].stride(0) == 576
            assert kw["L2_AHEAD"] == (1 if schedule == "seesaw" else 0)  # 100 heads: 2 head blocks share the latent
        else:
            assert "kv_ptr" not in kw and "L2_AHEAD" not in kw
        assert lse.shape == (b, h, splits)
        if splits == 1:
            assert o_part.data_ptr() == out.data_ptr() and not merges  # written in place, no merge
        else:
            assert o_part.dtype == torch.float32 and o_part.shape == (b, h, splits, 512) and len(merges) == 1
            assert merges[0][0] == (b, h) and merges[0][2]["NUM_SPLITS"] == splits
        assert tuple(a[10:15]) == (o_part.stride(0), o_part.stride(1), o_part.stride(2), lse.stride(0), lse.stride(1))
