"""The fused decode attention (RoPE + cache write + split-KV attention + in-kernel split merge) against the unfused
reference on fresh random inputs: outputs, the cache slots it writes, the counters it must leave zeroed; bad input;
the engine's greedy tokens with and without it. CPU: the Triton interpreter; GPU: realistic sizes, many splits,
repeated launches and a CUDA graph (a race in the split merge would show up as a mismatch)."""
import pytest
import torch

from phase4_scheduler.decode_attention import decode_attention, decode_attention_ref

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def make_case(lens, hq, hkv, d, bs, dtype, seed, rope=True, scratch=False):
    """Random caches, a shuffled block table per sequence, the slot of each new token (position len - 1), q/k/v.
    scratch: the last row is CUDA-graph padding (length 1, the scratch block, shared slot)."""
    g = torch.Generator().manual_seed(seed)
    nblk = sum(-(-n // bs) for n in lens) + 3
    kc = torch.randn(nblk + 1, bs, hkv, d, generator=g).to(dtype)
    vc = torch.randn(nblk + 1, bs, hkv, d, generator=g).to(dtype)
    width = max(-(-n // bs) for n in lens)
    perm = torch.randperm(nblk, generator=g).tolist()
    bt = torch.full((len(lens), width), nblk, dtype=torch.int32)
    slots = []
    for b, n in enumerate(lens):
        nb = -(-n // bs)
        bt[b, :nb] = torch.tensor(perm[:nb], dtype=torch.int32)
        perm = perm[nb:]
        slots.append(int(bt[b, (n - 1) // bs]) * bs + (n - 1) % bs)
    if scratch:
        lens = lens + [1]
        bt = torch.cat((bt, torch.full((1, width), nblk, dtype=torch.int32)))
        slots.append(nblk * bs)
    b = len(lens)
    q, k, v = (torch.randn(b, h, d, generator=g).to(dtype) for h in (hq, hkv, hkv))
    pos = torch.tensor([n - 1 for n in lens])
    cs = torch.randn(max(lens) + 4, d, generator=g) if rope else None
    t = lambda x: None if x is None else x.to(DEV)  # noqa: E731
    return dict(q=t(q), k=t(k), v=t(v), slot_mapping=t(torch.tensor(slots)), k_cache=t(kc), v_cache=t(vc),
                block_tables=t(bt), seq_lens=t(torch.tensor(lens, dtype=torch.int32)),
                positions=t(pos) if rope else None, cos_sin_cache=t(cs))


def unfused_triton_cache(case, with_q=False):
    """The caches (and FP8 scales) after the unfused Triton path's rope_qk + write_kv_cache (the same fp32 RoPE
    arithmetic, the same quantiser); with_q: and its rotated q."""
    from common import artifacts
    from phase4_scheduler.fused_kernels import rope_qk

    b, hq, d = case["q"].shape
    hkv = case["k"].shape[1]
    kc, vc = case["k_cache"].clone(), case["v_cache"].clone()
    ks, vs = (case[n].clone() if case.get(n) is not None else None for n in ("k_scale", "v_scale"))
    qkv = torch.cat([case[x].reshape(b, -1) for x in "qkv"], 1)
    if case["positions"] is not None:
        rope_qk(qkv, case["positions"], case["cos_sin_cache"], hq, hkv, d)
    k, v = qkv[:, hq * d:(hq + hkv) * d].view(b, hkv, d), qkv[:, (hq + hkv) * d:].view(b, hkv, d)
    artifacts.get("kv_cache.write")(k, v, case["slot_mapping"], kc, vc, ks, vs)
    return (kc, vc, ks, vs, qkv[:, :hq * d].view(b, hq, d)) if with_q else (kc, vc, ks, vs)


def fp8_case(case):
    """The case with its caches quantised to phase 3's FP8 format (e4m3 + fp16 scales per token and KV head)."""
    from common import artifacts

    quant = artifacts.get("kv_cache.fp8_quantize")
    kc, ks = quant(case["k_cache"])
    vc, vs = quant(case["v_cache"])
    return dict(case, k_cache=kc, v_cache=vc, k_scale=ks, v_scale=vs)


CACHES = ("k_cache", "v_cache", "k_scale", "v_scale")


def check(case, atol, **tiles):
    """Output against the reference, the cache slots against the unfused Triton path's (byte for byte), the counters
    zeroed. Over a bf16 / fp32 cache the reference is the fp32 unfused composition (and its cache must agree within
    atol too). Over an FP8 cache the reference attends over the cache the Triton path wrote, with its rotated q: the
    fp32 composition rotates in PyTorch, whose bf16 roundings differ from the kernels' by an ulp now and then, and
    one ulp can move a value to the next e4m3 code (~6%), which the outputs then show."""
    fp8 = case.get("k_scale") is not None
    ref = None if fp8 else {k: (v.clone() if k in CACHES and v is not None else v) for k, v in case.items()}
    *want, q_rot = unfused_triton_cache(case, with_q=True)
    hkv = case["k"].shape[1]
    counters = torch.zeros(case["q"].shape[0] * hkv + 5, dtype=torch.int32, device=DEV)
    got = decode_attention(**case, counters=counters, **tiles)
    if fp8:
        from common import artifacts
        expect = artifacts.get("attention.paged_decode_ref")(q_rot, *want[:2], case["block_tables"], case["seq_lens"],
                                                             *want[2:])
    else:
        expect = decode_attention_ref(**ref)
        torch.testing.assert_close(case["k_cache"].float(), ref["k_cache"].float(), atol=atol, rtol=atol)
    torch.testing.assert_close(got.float(), expect.float(), atol=atol, rtol=atol)
    bits = lambda t: t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t  # noqa: E731 (fp8 has no ==)
    for name, w in zip(CACHES, want):
        assert (w is None and case.get(name) is None) or torch.equal(bits(case[name]), bits(w)), \
            f"{name} must hold exactly what the unfused Triton path (rope_qk + write_kv_cache) writes"
    assert int(counters.abs().sum()) == 0, "the last split of every (sequence, head) must reset its counter"
    return got


@pytest.mark.parametrize("splits", [None, 1, 3, 8])
@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("hq,hkv,d", [(8, 2, 32), (9, 3, 64), (4, 4, 32)])
def test_matches_unfused_reference(splits, rope, hq, hkv, d):
    case = make_case([21, 1, 13, 2, 40], hq, hkv, d, bs=4, dtype=torch.float32, seed=hq * d + (splits or 0),
                     rope=rope, scratch=True)
    check(case, 1e-5, num_splits=splits)


@pytest.mark.parametrize("splits", [1, 3])
def test_without_the_first_tile_prefetch(splits):
    """The large-batch variant (history loaded after the wait, the first tile inside the loop)."""
    case = make_case([21, 1, 13, 40], 8, 2, 32, bs=4, dtype=torch.float32, seed=17 + splits, scratch=True)
    check(case, 1e-5, num_splits=splits, prefetch=False)


def test_splits_beyond_the_sequence_and_one_token_splits():
    """More splits than tiles (empty splits still count towards the merge), 1-token minimum split size."""
    case = make_case([3, 70, 5], 8, 2, 32, bs=8, dtype=torch.float32, seed=7)
    check(case, 1e-5, num_splits=16, block_n=16, min_tokens_per_split=16)


def test_bf16_matches_within_rounding():
    case = make_case([33, 9, 64], 8, 2, 64, bs=16, dtype=torch.bfloat16, seed=3)
    check(case, 3e-2, num_splits=4)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("prefetch", [True, False])
def test_fp8_cache_matches_the_unfused_path(splits, prefetch):
    """Over phase 3's FP8 cache the kernel quantises the new token as write_kv_cache does (the cache bytes and scales
    equal the unfused path's exactly) and attends to the history and the new token as the cache holds them (output
    within bf16 rounding of the fp32 reference over the same FP8 cache)."""
    for seed in (23, 26):  # 26: a case where the PyTorch-rotated reference lands on another e4m3 code (check's note)
        case = fp8_case(make_case([21, 1, 13, 40], 8, 2, 64, bs=4, dtype=torch.bfloat16, seed=seed + splits,
                                  scratch=True))
        check(case, 1e-2, num_splits=splits, prefetch=prefetch)


def test_fused_plan_medium_batches_and_phase3_elsewhere():
    """fused_plan: 32-511 (sequence, KV head) pairs get the measured medium-batch plan (~512 programs, >= 1 tile a
    split, capped by the table); fewer pairs, or any knob set, fall back to phase 3's plan."""
    from common import artifacts
    from phase4_scheduler.decode_attention import FUSED_PLAN_TILE, fused_plan

    dev = torch.device("cpu")
    p3 = artifacts.get("attention.paged_decode_plan")
    for fp8 in (False, True):
        bn, w, st, most = FUSED_PLAN_TILE[fp8]
        assert fused_plan(dev, 8, 4, 2048, fp8) == (bn, w, st, min(most, 16), bn)  # 32 pairs
        assert fused_plan(dev, 32, 4, 2048, fp8) == (bn, w, st, 4, bn)  # 128 pairs: 4 programs a pair
        assert fused_plan(dev, 64, 4, 2048, fp8) == (bn, w, st, 2, bn)
        assert fused_plan(dev, 120, 4, 2048, fp8) == (bn, w, st, 1, bn)
        assert fused_plan(dev, 32, 4, 2 * bn, fp8)[3] == 2  # no more splits than the table has tiles
        assert fused_plan(dev, 1, 4, 2048, fp8) == p3(dev, 1, 4, 2048, False)  # B=1: phase 3's (bf16) plan
        assert fused_plan(dev, 128, 4, 2048, fp8) == p3(dev, 128, 4, 2048, False)  # 512 pairs: not the fused regime
        assert fused_plan(dev, 32, 4, 2048, fp8, num_splits=3) == p3(dev, 32, 4, 2048, False, 3)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_medium_batch_plan_matches_the_reference(fp8):
    """The default plan at 32 pairs (8 sequences x 4 KV heads: 128- / 64-token tiles, 4 / 8 splits over a table of
    38 blocks): sequences shorter than a tile, one tile, and several -- against the reference."""
    from phase4_scheduler.decode_attention import FUSED_PLAN_TILE, fused_plan

    lens = [3, 130, 17, 600, 65, 140, 1, 129]
    case = make_case(lens, 8, 4, 32, bs=16, dtype=torch.bfloat16, seed=31 + fp8)
    plan = fused_plan(torch.device(DEV), 8, 4, case["block_tables"].shape[1] * 16, fp8)
    assert plan[0] == FUSED_PLAN_TILE[fp8][0] and plan[3] == (8 if fp8 else 4)
    check(fp8_case(case) if fp8 else case, 1e-2 if fp8 else 3e-2)


def test_fp8_cache_needs_its_scales():
    case = fp8_case(make_case([5, 6], 8, 2, 32, bs=4, dtype=torch.bfloat16, seed=2))
    with pytest.raises(ValueError, match="needs k_scale and v_scale"):
        decode_attention(**dict(case, k_scale=None, v_scale=None))
    with pytest.raises(ValueError, match="k_scale must be"):
        decode_attention(**dict(case, k_scale=case["k_scale"].float()))
    bf = make_case([5, 6], 8, 2, 32, bs=4, dtype=torch.bfloat16, seed=2)
    with pytest.raises(ValueError, match="take none"):
        decode_attention(**dict(bf, k_scale=case["k_scale"], v_scale=case["v_scale"]))


def test_counters_none_allocates_and_strided_views_work():
    case = make_case([17, 30], 8, 2, 32, bs=4, dtype=torch.float32, seed=11)
    b, hq, d = case["q"].shape
    hkv = case["k"].shape[1]
    qkv = torch.cat([case["q"].reshape(b, -1), case["k"].reshape(b, -1), case["v"].reshape(b, -1)], 1)
    views = dict(case, q=qkv[:, :hq * d].view(b, hq, d), k=qkv[:, hq * d:(hq + hkv) * d].view(b, hkv, d),
                 v=qkv[:, (hq + hkv) * d:].view(b, hkv, d))
    ref = {k: (v.clone() if k in ("k_cache", "v_cache") else v) for k, v in case.items()}
    got = decode_attention(**views, num_splits=3)
    torch.testing.assert_close(got, decode_attention_ref(**ref), atol=1e-5, rtol=1e-5)
    assert torch.equal(qkv[:, :hq * d].view(b, hq, d), case["q"]), "q, k, v are inputs: never rotated in place"


def test_bad_input_is_refused():
    case = make_case([5, 6], 8, 2, 32, bs=4, dtype=torch.float32, seed=1)
    with pytest.raises(ValueError, match="power of two"):
        decode_attention(**dict(case, q=case["q"][..., :24], k=case["k"][..., :24], v=case["v"][..., :24],
                                k_cache=case["k_cache"][..., :24].contiguous(),
                                v_cache=case["v_cache"][..., :24].contiguous()))
    with pytest.raises(ValueError, match="share one"):
        decode_attention(**dict(case, q=case["q"].half()))
    with pytest.raises(ValueError, match="together"):
        decode_attention(**dict(case, cos_sin_cache=None))
    with pytest.raises(ValueError, match="counters holds"):
        decode_attention(**case, counters=torch.zeros(1, dtype=torch.int32, device=DEV), num_splits=2)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        decode_attention(**dict(case, q=torch.randn(2, 7, 32, device=DEV)))
    with pytest.raises(ValueError, match="block_tables"):
        decode_attention(**dict(case, block_tables=case["block_tables"].long()))


def test_engine_greedy_tokens_fused_equals_unfused(monkeypatch):
    """The engine's decode-only steps take the fused kernel (RoPE folded out of the fused model's layer) and give
    the tokens the unfused path gives: TinyLlama shapes, random weights, fused model, 2 layers."""
    from common.sampling import SamplingParams
    from phase4_scheduler.engine import LLMEngine
    from phase4_scheduler.llm import LLM

    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    ps = [[1, 5, 9, 200, 31], [7] * 19, [3, 4]]
    out = {}
    for mode in ("fused", "unfused"):
        monkeypatch.setenv("TITAN_DECODE_ATTENTION", mode)
        eng = LLMEngine.from_model("tinyllama-1.1b", device=DEV, random_weights=True, num_layers=2, num_blocks=16,
                                   max_model_len=64, backend="triton", fuse=True, dtype=torch.float32)
        assert (eng.runner.decode_attention_fn is not None) == (mode == "fused")
        calls = []
        if mode == "fused":
            inner = eng.runner.decode_attention_fn
            eng.runner.decode_attention_fn = lambda *a, **k: (calls.append(k is not None), inner(*a, **k))[1]
        out[mode] = [o.output_token_ids for o in LLM(engine=eng).generate(ps, params)]
        if mode == "fused":
            assert calls, "decode-only steps must go through the fused kernel"
    assert out["fused"] == out["unfused"]


def test_engine_fp8_pool_folds_unless_told_not_to_and_gives_the_same_tokens(monkeypatch):
    """Over an FP8 pool decode-only steps go through the fused kernel with the pool's scales (the default, and with
    TITAN_FP8_FUSED=1); TITAN_FP8_FUSED=0 keeps the four unfused kernels; the greedy tokens are the same."""
    from common.sampling import SamplingParams
    from phase4_scheduler.engine import LLMEngine
    from phase4_scheduler.llm import LLM

    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    ps = [[1, 5, 9, 200, 31], [7] * 19, [3, 4]]
    out = {}
    for flag in (None, "1", "0"):
        if flag:
            monkeypatch.setenv("TITAN_FP8_FUSED", flag)
        else:
            monkeypatch.delenv("TITAN_FP8_FUSED", raising=False)
        eng = LLMEngine.from_model("tinyllama-1.1b", device=DEV, random_weights=True, num_layers=2, num_blocks=32,
                                   max_model_len=64, backend="triton", fuse=True, dtype=torch.float32,
                                   kv_cache_dtype="fp8")
        fused = flag != "0"
        assert (eng.runner.decode_attention_fn is not None) == fused
        calls = []
        if fused:
            inner = eng.runner.decode_attention_fn
            eng.runner.decode_attention_fn = lambda *a, **k: (calls.append(k["k_scale"] is not None), inner(*a, **k))[1]
        out[flag] = [o.output_token_ids for o in LLM(engine=eng).generate(ps, params)]
        if fused:
            assert calls and all(calls), "decode-only steps must go through the fused kernel with the FP8 scales"
    assert out[None] == out["1"] == out["0"]


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv,d", [(32, 4, 64), (9, 3, 64), (32, 8, 128)])
def test_gpu_large_many_splits_repeated(hq, hkv, d):
    """Realistic sizes in bf16; every split count the planner picks and forced ones; 20 fresh launches each (a
    missing barrier or fence in the split merge shows up as an intermittent mismatch)."""
    lens = [4999, 1, 333, 2048, 77, 257, 8191, 64]
    for rep in range(20):
        case = make_case(lens, hq, hkv, d, bs=16, dtype=torch.bfloat16, seed=rep, scratch=rep % 2 == 0)
        check(case, 3e-2, num_splits=(None, 2, 7, 32, 128)[rep % 5], prefetch=rep % 3 != 0)


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv,d", [(32, 4, 64), (32, 8, 128)])
def test_gpu_fp8_cache_large_many_splits(hq, hkv, d):
    """The FP8 path at realistic sizes on the GPU (tensor-core dots over converted e4m3 tiles): same cache bytes as
    the unfused path, output within bf16 rounding of the reference over that cache."""
    lens = [4999, 1, 333, 2048, 77, 257, 64]
    for rep in range(6):
        case = fp8_case(make_case(lens, hq, hkv, d, bs=16, dtype=torch.bfloat16, seed=100 + rep, scratch=rep % 2 == 0))
        check(case, 3e-2, num_splits=(None, 2, 7, 32, 128, 1)[rep], prefetch=rep % 3 != 0)


@pytest.mark.gpu
def test_gpu_cuda_graph_replays_with_persistent_counters():
    case = make_case([300, 17, 1024, 5], 32, 4, 64, bs=16, dtype=torch.bfloat16, seed=5)
    counters = torch.zeros(64, dtype=torch.int32, device=DEV)
    pristine = (case["k_cache"].clone(), case["v_cache"].clone())
    decode_attention(**case, counters=counters)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = decode_attention(**case, counters=counters)
    for _ in range(50):
        g.replay()
    torch.cuda.synchronize()
    ref = dict(case, k_cache=pristine[0].clone(), v_cache=pristine[1].clone())
    torch.testing.assert_close(out.float(), decode_attention_ref(**ref).float(), atol=3e-2, rtol=3e-2)
    assert int(counters.abs().sum()) == 0


def test_runner_uses_the_fused_kernel_only_below_the_pair_threshold():
    """Decode-only steps with B * Hkv < FUSED_DECODE_MAX_PAIRS take the fused kernel; wider ones, prefill steps and
    runners without the kernel (FP8 cache, TITAN_DECODE_ATTENTION=unfused) do not."""
    from types import SimpleNamespace

    from phase4_scheduler.model_runner import FUSED_DECODE_MAX_PAIRS, BatchAttention

    runner = SimpleNamespace(decode_attention_fn=decode_attention, config=SimpleNamespace(num_key_value_heads=4))
    step = lambda b, q_len=1: BatchAttention(runner, torch.zeros(b, 2, dtype=torch.int32),  # noqa: E731
                                             torch.ones(b, dtype=torch.int32), torch.zeros(b), max_q_len=q_len)
    below = FUSED_DECODE_MAX_PAIRS // 4 - 1
    assert step(1).fused_decode and step(below).fused_decode and step(below).rope_in_attention
    assert not step(below + 1).fused_decode and not step(below + 1).rope_in_attention
    assert not step(4, q_len=3).fused_decode
    runner.decode_attention_fn = None
    assert not step(1).fused_decode


@pytest.mark.slow
def test_register_accounting_compiles_for_hopper_and_the_cap_binds():
    """decode_resources.py compiles phase 3's decode kernel and the fused one for sm_90a on this machine (ptxas -v):
    every row reports registers; the capped fused row uses no more than phase 3's kernel at its tile, and so fits as
    many programs per SM. A subprocess: the interpreter (set for this suite) never compiles."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0"}  # real JIT functions (phase 3's import would pick the interpreter)
    code = "import json; from phase4_scheduler.decode_resources import rows; print(json.dumps(rows()))"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(0 < row["registers"] <= 255 and not row["ptxas_error"] for row in out)
    for regime in {row["regime"] for row in out}:
        rs = [row for row in out if row["regime"] == regime]
        phase3, capped = rs[0], rs[-1]
        assert capped["maxnreg"] == phase3["registers"] >= capped["registers"]
        assert capped["programs_per_sm"] >= phase3["programs_per_sm"]
        # the new token is scored and cached before the history loop, so the fused kernel (no prefetch: the
        # large-batch variant) keeps no more state through the loop than phase 3's kernel does
        fused = next(row for row in rs if row["kernel"] == "fused, RoPE on, prefetch off")
        assert fused["registers"] <= phase3["registers"] and fused["spill_store_bytes"] == 0


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_bench_inputs_agree_fused_and_unfused(fp8):
    """bench_decode_attention's own check (what it times, fused against unfused, on its random bf16 / FP8 caches):
    outputs within rounding, the same cache bytes and scales, counters left zeroed -- a 2-token-short last block."""
    from phase4_scheduler import bench_decode_attention as bda

    err, cache_equal, counters_zero = bda.check_case(3, 2 * bda.BS + 14, fp8=fp8, dev=DEV)
    assert err < 2e-2 and cache_equal and counters_zero


@pytest.mark.gpu
def test_gpu_bench_decode_attention_case_runs_over_both_pools():
    from phase4_scheduler import bench_decode_attention as bda

    for fp8 in (False, True):
        r = bda.run_case(8, 300, layers=2, fp8=fp8)
        assert r["kv_cache_dtype"] == ("fp8" if fp8 else "bf16") and r["cache_equal"] and r["counters_zero"]
        assert r["max_abs_diff"] < 2e-2 and min(r["fused_us"], r["unfused_us"]) > 0
