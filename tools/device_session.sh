#!/usr/bin/env bash
# The open GPU work of issues 4 and 6, as parts to batch into device calls (each call <= 10 min, ~30 min a session).
# Prepare HERE first: bash tools/device_carry.sh   (fills .carry/: ShareGPT lengths + the phase-1 wheel)
# On the device (repository root, its own torch/triton), calls back to back (the machine goes back after 30 s idle;
# ~30 min of device time a session, an H100 counted in full), in order of value:
#   bash tools/device_session.sh verify b1 offline      # ~6 min: correctness of the new code first
#   bash tools/device_session.sh steady                 # ~9 min: the H100 continuous/static ratio
#   bash tools/device_session.sh steadypiece phase2     # ~8 min
#   the vLLM peer in the same lease: tools/device_peer.sh's three calls, the last running `vllm b1 offline`
# As a device-tool call: run(command="bash tools/device_session.sh verify b1 offline 2>&1 | tail -80",
#   carry=[".carry"], timeout_s=590, kind="nvidia-h100-x1").
# Everything committed has run on the H100 (2026-12-06, twentieth session, TAGs s1210..s1210h: direct graph I/O
# (graphio, verify), the seesaw's clock under power cap (mlacont), bench_mla --only mla, b1, offline, hostprof;
# twenty-first session, TAGs s1210m, s1210o, s1210p: FlashMLA beside the seesaw (mlapeer), mlacont, mla).
# Next measurements:
#   TAG=<new tag> bash tools/device_session.sh mlapeer mlacont         # on an H200: FlashMLA and the seesaw there
#   (every call naming nvidia-h200 so far got an H100 or no machine)
#   TAG=<new tag> bash tools/device_session.sh gemvsweep               # on an H200: the M=1 tile rule (step_tile) was
#   chosen on the H100; the H200's older sweep preferred 4x1024/4 warps for gate_up
#   TAG=<new tag> MLA_AB_BENCH=1 bash tools/device_session.sh mlaab    # the seesaw on an H200 (never run there; two
#   calls naming nvidia-h200 got H100s)
#   TAG=<new tag> bash tools/device_session.sh mlacont                 # after any MLA kernel change: clocks per tile
#   and the board's power at 32..128 programs (the 128-head case is power-capped on the H100)
# Every result is named by the card (_h100 / _h200) and packed into $OUT/results_<parts>.tgz with the log (a device
# call returns at most 8 files). Unpack into the repo root: the archive holds phase*/results/ paths.
#
# Parts:
#   verify      GPU tests of the code changed since the last lease (phase 3's flat prefill grid, one-copy step
#               inputs, the step timer, full mixed-step graphs, fused-model reuse, the graphs' shared logits
#               buffer) + the phase-1 wheel against its reference + the engine's GPU check
#   gemv        the SiLU-and-mul in gate_up's epilogue and the persistent GEMV: their GPU tests, then B=1 with each
#               on / off in one call                                                -> phase4 latency_gemv_<tag>
#   gemvsweep   sweep_gemv_chain: both GEMV kernels' tiles timed inside the B=1 step -> phase4 gemv_chain_<tag>
#   b1          B=1 decode, TinyLlama-1.1B shapes (with and without PDL)             -> phase4 latency_<tag>
#   graphio     direct graph I/O (graph_io.py): GPU tests of the graphs, argmax, overlap and engine, then B=1
#               with the graphs' inputs read from pinned memory / copied in, alternating -> phase4 latency_graphio_<tag>
#   mlacont     contention_mla: the seesaw's us per tile at 32-128 programs sharing / not sharing their latent,
#               and the L2 / DRAM read bandwidth                         -> phase2 contention_mla_<tag>
#   mlapeer     peer_flashmla: FlashMLA (vLLM 0.25.0's _flashmla_C, extracted by device_carry.sh) and the seesaw on
#               the same inputs: correctness, interleaved timing, SM clock and board power under each
#                                                                               -> phase2 peer_flashmla_<tag>
#   hostprof    the B=1 engine loop under cProfile: per-step host wall times, forward GPU times, top functions
#                                                                                   -> phase4 profile_host_b1_<tag>
#   offline     1024 x 128/128 offline (+ HF eager B=1 / B=64 in the same run), then with piecewise mixed-step graphs
#                                                                                   -> phase4 offline_gpu_1024_<tag>
#   sharegpt    offline ShareGPT 1000 requests, continuous vs static throughput   -> phase4 sharegpt_static_vs_continuous_<tag>
#   steady      continuous vs static at equal p50 latency, 512 seats, overlapped mixed steps, GPU ms per step
#               kind (TITAN_STEP_TIMING)                                            -> phase4 equal_latency_steady512_<tag>
#               (full mixed-step graphs since they became the default; the 2026-12-06 H100 run was piecewise)
#   steadypiece the same sweep, continuous only, with piecewise mixed-step graphs (the default is full since
#               2026-12-06; the 2026-12-06 H100 files named _fullgraphs_ are that lease's full-graph A/B)
#   defaults    the engine's defaults since 2026-12-06 (full mixed-step graphs, overlapped mixed steps), no switches:
#               continuous at 160 / 320 / 384 req/s, 512 seats                     -> phase4 equal_latency_defaults512_<tag>
#   profile     one B=448 / 384-token decode step profiled                          -> phase4 profile_decode_b448_<tag>
#   fp8         the FP8 pool's bit-moving conversion (phase3_paged_fp8/fp8_bits.py): its GPU tests, the decode kernel
#               bf16 / FP8 converting / FP8 bits at the engine's shapes          -> phase3 fp8_bits_<tag>
#               then offline 1024 x 128/128 over the bf16 pool, the FP8 pool (bits) and the FP8 pool (cvt)
#               -> phase4 offline_gpu_1024_{bf16,fp8,fp8cvt}_<tag>
#   steadywide  the steady-state sweep from 64 req/s (continuous and static, 512 seats, bf16 pool), the ratio also at
#               p50 targets of 1.0-1.75 s                                       -> phase4 equal_latency_wide512_<tag>
#   steadyfp8   the same over the FP8 pool (bits)                  -> phase4 equal_latency_wide512_fp8_<tag>
#   steadyfp8fused  continuous only over the FP8 pool, TITAN_FP8_FUSED=1 (default since df675ce; small decode steps through the fused
#               kernel's FP8 path; the fp8 part runs its GPU tests first) -> phase4 equal_latency_wide512_fp8fused_<tag>
#   profilefp8  the profile part over the bf16 pool and the FP8 pool (where the FP8 pool's steps lose their time)
#                                                        -> phase4 profile_decode_b448_{bf16,fp8}_<tag>
#   fp8small    where small decode steps and prompt-carrying steps lose their time over the FP8 pool: the decode
#               attention fused / unfused and a mixed step's attention packed / split over each pool at ShareGPT-like
#               contexts, and the engine's B=32 decode step profiled over bf16, FP8, FP8 fused
#               -> phase4 decode_attention_fp8_<tag>, mixed_attention_fp8_<tag>, profile_decode_b32_p260_*_<tag>
#   smallsweep  sweep_small_steps: the fused decode attention's tile / warps / stages / splits at B <= 120 and the
#               prefill kernel's tile in mixed steps, over each pool -> phase4 small_steps_sweep_{decode,prefill}_<tag>
#   fusedplan   the fused decode attention's medium-batch plan (decode_attention.fused_plan), FP8 decode steps fused
#               by default, phase 3's FP8 prefill on 128-token tiles: GPU tests, the decode attention per pool, the
#               prefill tiles incl. long prompts, continuous over each pool (wide grid)
#               -> phase4 decode_attention_plan_<tag>, small_steps_sweep_prefill_long_<tag>,
#                  equal_latency_wide512_cont_{bf16,fp8}_<tag>
#   mla         GPU tests of the seesaw MLA schedules (seesaw, seesaw_chunked) + bench_mla --only mla
#                                                                               -> phase2 bench_mla_<tag>
#   mlaab       GPU tests of the seesaw variants (SEESAW_VARIANTS: with / without the L2 prefetch, chunked), then all
#               variants timed in interleaved rounds at 128 and 16 heads (MLA_AB_ARGS adds ab_seesaw options)
#                                                                               -> phase2 ab_seesaw_<tag>
#   mlancu      (MLA_SCHEDULE=seesaw_chunked for the chunked one) Nsight Compute on one launch of the seesaw MLA kernel (128 heads, B=64, ctx 4K): every section, the
#               stall reasons, per-SASS-instruction samples, raw metrics -> phase2 seesaw_ncu_{details,sass,raw}_<tag>
#   decodencu   Nsight Compute on phase 3's decode kernel at B=1,024 / 192 tokens, bf16 and FP8 (bits) pools
#                                                                  -> phase3 decode_ncu_{bf16,fp8}{,_sass,_raw}_<tag>
#   phase2      make phase2 / make milestone1's gates (seesaw Gluon MLA live) + the MLA decode benchmark
#   vllm        the vLLM 0.25.0 peer's B=1 and offline figures (TinyLlama shapes, max_num_seqs 1024) on this machine,
#               staged first by tools/device_peer.sh; put it in the same call as b1 offline (same-lease ratios)
#                                                                                   -> phase4 vllm_tinyllama_<tag>
set -uo pipefail
command -v nvidia-smi >/dev/null || { echo "device_session.sh runs on the GPU machine (no nvidia-smi here); prepare with tools/device_carry.sh, then call it through the device tool" >&2; exit 1; }
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
G=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -qi h200 && echo h200 || echo h100)
TAG=${TAG:-s$(date +%m%d)}_$G
WORK=$(mktemp -d)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TITAN_CACHE=$PWD/.carry
# the device's copy has no .git: provenance's commit comes from the one device_carry.sh recorded (+dirty if so)
export TITAN_COMMIT=${TITAN_COMMIT:-$(cat .carry/COMMIT 2>/dev/null || echo unknown)}
mkdir -p "$WORK/phase2_mla/results" "$WORK/phase4_scheduler/results" "$WORK/phase3_paged_fp8/results" \
  "$WORK/phase1_rust_allocator/results"
parts=${*:-verify b1 offline}
has() { [[ " $parts " == *" $1 "* ]]; }
LOG=$WORK/phase4_scheduler/results/device_session_$TAG.log
exec > >(tee -a "$LOG") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "device_session: parts [$parts], tag $TAG, commit $TITAN_COMMIT"
WHEEL=$(ls .carry/kv_cache_manager-*-abi3-*.whl 2>/dev/null | head -1 || true)
if [ -n "$WHEEL" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/kvcm_site "$WHEEL" \
    && export PYTHONPATH=/tmp/kvcm_site:$PYTHONPATH
else
  echo "device_session: no phase-1 wheel in .carry (tools/device_carry.sh): the Python allocator runs instead"
fi
declare -A status
step() {  # step NAME TIMEOUT_S CMD... : run, record the exit status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | grep -v "it/s]"
  status[$name]=${PIPESTATUS[0]}
  echo "== $name: exit ${status[$name]} in $((SECONDS - t0)) s"
}
P4=(--device cuda --model tinyllama-1.1b --random-weights --fuse)
LEN=$TITAN_CACHE/sharegpt_lengths_smollm2_1000_1024_2048_4.json
STEADY_SETUP=(--max-num-batched-tokens 8192 --kv-memory 0.3 --duration 8 --max-requests 4608 --lengths-file "$LEN"
              --max-num-seqs 512)
STEADY=("${STEADY_SETUP[@]}" --rates 160 192 224 256 320 384 448 512 576)
OFF=(--num-prompts 1024 --input-len 128 --output-len 128 --max-num-seqs 1024 --max-num-batched-tokens 32768
     --kv-memory 0.3)  # offline 1024 x 128/128
ncu_exports() {  # ncu_exports REPORT DETAILS.txt SASS.csv.gz RAW.csv.gz (nothing if ncu wrote no report)
  [ -f "$1.ncu-rep" ] || return 0
  ncu --import "$1.ncu-rep" --page details --print-details all > "$2" 2>&1
  ncu --import "$1.ncu-rep" --page source --print-source sass --csv 2>&1 | gzip > "$3"
  ncu --import "$1.ncu-rep" --page raw --csv 2>&1 | gzip > "$4"
}
PROFILE448=(python3 -m phase4_scheduler.profile_decode --random-weights --fuse --batches 448 --kv-memory 40GiB)
mla_bench() {  # bench_mla --only mla into phase 2's results, kept as bench_mla_<tag>.json
  TITAN_RESULTS_DIR=$WORK/phase2_mla/results step bench_mla 200 python3 -m phase2_mla.bench_mla \
    --only "${MLA_BENCH_ONLY:-mla}"  # MLA_BENCH_ONLY=rope,mla,gqa: the whole record in one call
  [ -f "$WORK/phase2_mla/results/bench_mla.json" ] && mv "$WORK/phase2_mla/results/bench_mla.json" \
    "$WORK/phase2_mla/results/bench_mla_$TAG.json"
}
SMALL_DECODE=(1x256 8x260 32x260 64x260 120x260 32x1024)  # decode attention cases (batch x tokens) of the small-step parts
# the same grid with three lower rates and four tighter p50 targets: static's side of the curve below its best
STEADY_WIDE=("${STEADY_SETUP[@]}" --rates 64 96 128 160 192 224 256 320 384 448 512 576 --target-p50 1.0 1.25 1.5 1.75)

if has verify; then
  step verify_tests 300 python3 -m pytest -q -m gpu -p no:cacheprovider \
    phase3_paged_fp8/tests phase4_scheduler/tests/test_step_inputs.py phase4_scheduler/tests/test_step_timer.py \
    phase4_scheduler/tests/test_mixed_graphs.py phase4_scheduler/tests/test_mixed_attention.py \
    phase4_scheduler/tests/test_overlap.py phase4_scheduler/tests/test_overlap_mixed.py \
    phase4_scheduler/tests/test_cuda_graphs.py phase4_scheduler/tests/test_engine.py \
    phase4_scheduler/tests/test_sampling_fuzz.py
  [ -n "$WHEEL" ] && TITAN_RESULTS_DIR=$WORK/phase1_rust_allocator/results step wheel_check 120 \
    python3 -m phase1_rust_allocator.check_wheel   # the carried abi3 wheel (lazy pool) against the reference
  TITAN_RESULTS_DIR=$WORK/phase4_scheduler/results step check_engine 240 \
    bash -c "set -o pipefail; python3 -m phase4_scheduler.gpu_check_engine | tee $WORK/phase4_scheduler/results/gpu_check_engine_$TAG.log"
fi
export TITAN_RESULTS_DIR=$WORK/phase4_scheduler/results
if has vllm; then
  if [ -e /tmp/peer/vllm.part00 ] && [ -e /tmp/peer/vllm.part01 ] && [ -d /tmp/peer/whl ]; then
    [ -d /tmp/vllm/vllm ] || { mkdir -p /tmp/vllm && cat /tmp/peer/vllm.part0* | xz -d | tar x -C /tmp/vllm; }
    [ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/peer/whl/*.whl
    OUT=$WORK/phase4_scheduler/results VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONPATH=/tmp/vllm:/tmp/site \
      PRESET=tinyllama MAXSEQ=1024 step vllm 420 python3 /tmp/peer/bench_offline.py
    f=$WORK/phase4_scheduler/results/vllm_tinyllama_1024.json
    [ -f "$f" ] && mv "$f" "$WORK/phase4_scheduler/results/vllm_tinyllama_1024_$TAG.json"
  else
    echo "== vllm: not staged (tools/device_peer.sh: the two parts and the wheels, in calls back to back)"
    status[vllm]=2
  fi
fi
if has gemv; then  # the SiLU epilogue and the persistent GEMV: GPU tests, B=1 A/B in one call, the in-step tile sweep
  step gemv_tests 240 python3 -m pytest -q -m gpu -p no:cacheprovider phase4_scheduler/tests/test_fused_kernels.py \
    phase4_scheduler/tests/test_gemv_tiles.py phase4_scheduler/tests/test_fused_model.py
  step b1_gemv 330 python3 -m phase4_scheduler.bench_latency --model tinyllama-1.1b --random-weights \
    --variants graph+fused+nosiluepi+nopersist graph+fused+siluepi+nopersist graph+fused+siluepi+persist \
    graph+fused+nosiluepi+nopersist --name "latency_gemv_$TAG"
fi
if has gemvsweep; then
  step gemv_sweep 400 python3 -m phase4_scheduler.sweep_gemv_chain --random-weights --reps 40 --name "gemv_chain_$TAG"
fi
if has graphio; then  # direct graph I/O (graph_io.py): GPU tests of what it touches, then B=1 direct / copy A/B
  step graphio_tests 300 python3 -m pytest -q -m gpu -p no:cacheprovider phase4_scheduler/tests/test_cuda_graphs.py \
    phase4_scheduler/tests/test_argmax.py phase4_scheduler/tests/test_overlap.py \
    phase4_scheduler/tests/test_overlap_mixed.py phase4_scheduler/tests/test_engine.py
  step b1_graphio 300 python3 -m phase4_scheduler.bench_latency --model tinyllama-1.1b --random-weights \
    --variants graph+fused graph+fused+graphcopy graph+fused graph+fused+graphcopy graph+fused \
    --name "latency_graphio_$TAG"
fi
if has mlacont; then  # the seesaw's time per tile at more and fewer programs, sharing or not their latent
  TITAN_RESULTS_DIR=$WORK/phase2_mla/results step mlacont 300 python3 -m phase2_mla.contention_mla ${MLA_CONT_ARGS:-} \
    --name "contention_mla_$TAG"
fi
if has mlapeer; then  # FlashMLA (vLLM's compiled extension, .carry/flashmla) against the seesaw, same inputs and call
  TITAN_RESULTS_DIR=$WORK/phase2_mla/results step mlapeer 300 python3 -m phase2_mla.peer_flashmla ${MLA_PEER_ARGS:-} \
    --so .carry/flashmla --name "peer_flashmla_$TAG"
fi
has hostprof && step hostprof 120 python3 -m phase4_scheduler.profile_host --name "profile_host_b1_$TAG"
has b1 && step b1 200 python3 -m phase4_scheduler.bench_latency --model tinyllama-1.1b --random-weights \
  --variants graph+fused graph+fused+nopdl graph+fused+nosiluepi graph+fused+autotune graph+fused --name "latency_$TAG"
if has offline; then
  step offline 200 python3 -m phase4_scheduler.bench_offline "${P4[@]}" "${OFF[@]}" --hf --name "offline_gpu_1024_$TAG"
  TITAN_MIXED_GRAPHS=piecewise step offline_piecewise 150 python3 -m phase4_scheduler.bench_offline "${P4[@]}" \
    "${OFF[@]}" --name "offline_gpu_1024_piecewise_$TAG"
fi
if has fp8; then
  step fp8_tests 200 python3 -m pytest -q -m gpu -p no:cacheprovider phase3_paged_fp8/tests/test_gpu.py \
    phase4_scheduler/tests/test_kv_fp8.py phase4_scheduler/tests/test_decode_attention.py
  TITAN_RESULTS_DIR=$WORK/phase3_paged_fp8/results step fp8_bench 240 python3 -m phase3_paged_fp8.bench_fp8_bits \
    --name "fp8_bits_$TAG"
  step offline_bf16 150 python3 -m phase4_scheduler.bench_offline "${P4[@]}" "${OFF[@]}" \
    --name "offline_gpu_1024_bf16_$TAG"
  step offline_fp8 150 python3 -m phase4_scheduler.bench_offline "${P4[@]}" "${OFF[@]}" --kv-cache-dtype fp8 \
    --name "offline_gpu_1024_fp8_$TAG"
  TITAN_FP8_CVT=cvt step offline_fp8cvt 150 python3 -m phase4_scheduler.bench_offline "${P4[@]}" "${OFF[@]}" \
    --kv-cache-dtype fp8 --name "offline_gpu_1024_fp8cvt_$TAG"
fi
has steadywide && step steadywide 330 python3 -m phase4_scheduler.bench_equal_latency "${P4[@]}" "${STEADY_WIDE[@]}" \
  --policies continuous static --name "equal_latency_wide512_$TAG"
has steadyfp8fused && TITAN_FP8_FUSED=1 step steadyfp8fused 330 python3 -m phase4_scheduler.bench_equal_latency \
  "${P4[@]}" "${STEADY_WIDE[@]}" --policies continuous --kv-cache-dtype fp8 --name "equal_latency_wide512_fp8fused_$TAG"
has steadyfp8 && step steadyfp8 330 python3 -m phase4_scheduler.bench_equal_latency "${P4[@]}" "${STEADY_WIDE[@]}" \
  --policies continuous static --kv-cache-dtype fp8 --name "equal_latency_wide512_fp8_$TAG"
has sharegpt && step sharegpt 300 python3 -m phase4_scheduler.bench_offline "${P4[@]}" --workload sharegpt \
  --num-prompts 1000 --max-num-seqs 512 --max-num-batched-tokens 8192 --kv-memory 0.3 --compare-static \
  --name "sharegpt_static_vs_continuous_$TAG"
has steady && TITAN_OVERLAP_MIXED=1 step steady 560 python3 -m phase4_scheduler.bench_equal_latency "${P4[@]}" \
  "${STEADY[@]}" --policies continuous static --name "equal_latency_steady512_$TAG"
has steadypiece && TITAN_OVERLAP_MIXED=1 TITAN_MIXED_GRAPHS=piecewise step steadypiece 330 \
  python3 -m phase4_scheduler.bench_equal_latency "${P4[@]}" "${STEADY[@]}" --policies continuous \
  --name "equal_latency_steady512_piecewise_$TAG"
has defaults && step defaults 240 env -u TITAN_OVERLAP_MIXED -u TITAN_MIXED_GRAPHS \
  python3 -m phase4_scheduler.bench_equal_latency "${P4[@]}" "${STEADY_SETUP[@]}" --rates 160 320 384 \
  --policies continuous --name "equal_latency_defaults512_$TAG"
has profile && step profile 200 "${PROFILE448[@]}" --prompt-len 384 --name "profile_decode_b448_$TAG"
if has profilefp8; then  # one B=448 / 384-token decode step over the bf16 pool and the FP8 pool, same call
  PLEN=${PROFILE_PROMPT_LEN:-384}  # PROFILE_PROMPT_LEN=1536: the same at ShareGPT's longer contexts
  SUF=$([ "$PLEN" = 384 ] && echo "" || echo "_p$PLEN")
  for dt in auto fp8; do
    step "profile_$dt" 200 "${PROFILE448[@]}" --prompt-len "$PLEN" --kv-cache-dtype "$dt" \
      --name "profile_decode_b448${SUF}_${dt/auto/bf16}_$TAG"
  done
fi
if has fp8small; then  # where small decode steps and prompt-carrying steps lose their time over the FP8 pool
  step fp8small_tests 200 python3 -m pytest -q -m gpu -p no:cacheprovider phase4_scheduler/tests/test_mixed_attention.py \
    phase4_scheduler/tests/test_decode_attention.py -k bench
  step fp8small_decode 200 python3 -m phase4_scheduler.bench_decode_attention --kv-cache-dtype both \
    --cases "${SMALL_DECODE[@]}" --name "decode_attention_fp8_$TAG"
  step fp8small_mixed 200 python3 -m phase4_scheduler.bench_mixed_attention --kv-cache-dtype both \
    --cases 35x260+1x128 100x260+1x200 300x260+2x250 --name "mixed_attention_fp8_$TAG"
  for v in bf16 fp8 fp8fused; do  # the engine's B=32 decode step over each pool (fp8fused: TITAN_FP8_FUSED=1)
    TITAN_FP8_FUSED=$([ $v = fp8fused ] && echo 1 || echo 0) step "profile_b32_$v" 150 python3 -m \
      phase4_scheduler.profile_decode --random-weights --fuse --batches 32 --prompt-len 260 \
      --kv-cache-dtype "$([ $v = bf16 ] && echo auto || echo fp8)" --name "profile_decode_b32_p260_${v}_$TAG"
  done
fi
if has smallsweep; then  # the small steps' kernels: tile / warps / stages / splits over each pool
  step smallsweep_decode 300 python3 -m phase4_scheduler.sweep_small_steps --only decode \
    --name "small_steps_sweep_decode_$TAG"
  step smallsweep_prefill 240 python3 -m phase4_scheduler.sweep_small_steps --only prefill \
    --name "small_steps_sweep_prefill_$TAG"
fi
if has fusedplan; then  # the fused kernel's medium-batch plan, FP8 decode steps fused, FP8 prefill 128-token tiles
  step fusedplan_tests 150 python3 -m pytest -q -m gpu -p no:cacheprovider phase4_scheduler/tests/test_decode_attention.py \
    phase3_paged_fp8/tests/test_gpu.py -k "fp8 or medium or bench or prefill or many_splits"
  step fusedplan_decode 90 python3 -m phase4_scheduler.bench_decode_attention --kv-cache-dtype both \
    --cases "${SMALL_DECODE[@]}" --name "decode_attention_plan_$TAG"
  step fusedplan_prefill 100 python3 -m phase4_scheduler.sweep_small_steps --only prefill --mixed-cases \
    35x260+1x128 300x260+2x250 448x260+1x1024 2x16+1x2048 1x16+1x4096 --name "small_steps_sweep_prefill_long_$TAG"
  for dt in auto fp8; do  # continuous only, the wide grid, 512 seats: the engine's defaults over each pool
    step "steady_$dt" 170 python3 -m phase4_scheduler.bench_equal_latency "${P4[@]}" "${STEADY_WIDE[@]}" \
      --policies continuous --kv-cache-dtype "$dt" --name "equal_latency_wide512_cont_${dt/auto/bf16}_$TAG"
  done
fi
if has mla; then
  step mla_tests 300 python3 -m pytest -q -m gpu -p no:cacheprovider phase2_mla/tests/test_mla_decode.py -k seesaw
  mla_bench
fi
if has mlaab; then  # the seesaw variants (L2 prefetch, slot 1's halves reversed): GPU tests, then a same-call A/B
  [ "${MLA_AB_TESTS:-}" != none ] && step mlaab_tests 240 python3 -m pytest -q -m gpu -p no:cacheprovider \
    phase2_mla/tests/test_mla_decode.py -k "${MLA_AB_TESTS:-seesaw}"
  TITAN_RESULTS_DIR=$WORK/phase2_mla/results step mlaab 240 python3 -m phase2_mla.ab_seesaw ${MLA_AB_ARGS:-} \
    --name "ab_seesaw_$TAG"
  [ -n "${MLA_AB_BENCH:-}" ] && mla_bench  # MLA_AB_BENCH=1: bench_mla --only mla after the A/B
fi
if has mlancu; then
  R=$WORK/phase2_mla/results
  SCHED=${MLA_SCHEDULE:-seesaw}  # MLA_SCHEDULE=seesaw_chunked profiles the chunked one
  step mla_events 120 python3 -m phase2_mla.profile_seesaw --schedule "$SCHED"
  step mla_ncu 300 ncu --clock-control none --kernel-name regex:seesaw --launch-skip 3 --launch-count 1 --set full \
    --import-source no -f -o /tmp/seesaw_ncu python3 -m phase2_mla.profile_seesaw --schedule "$SCHED"
  S=${SCHED#seesaw}  # "" or "_chunked"
  ncu_exports /tmp/seesaw_ncu "$R/seesaw${S}_ncu_details_$TAG.txt" "$R/seesaw${S}_ncu_sass_$TAG.csv.gz" \
    "$R/seesaw${S}_ncu_raw_$TAG.csv.gz"
fi
if has decodencu; then
  for dt in bf16 fp8; do
    step "decode_ncu_$dt" 150 ncu --clock-control none --kernel-name regex:paged_decode_kernel --launch-skip 3 \
      --launch-count 1 --set full --import-source no -f -o "/tmp/decode_$dt" \
      python3 -m phase3_paged_fp8.profile_decode --dtype "$dt"
    R3=$WORK/phase3_paged_fp8/results/decode_ncu_$dt
    ncu_exports "/tmp/decode_$dt" "${R3}_$TAG.txt" "${R3}_sass_$TAG.csv.gz" "${R3}_raw_$TAG.csv.gz"
  done
fi
if has phase2; then
  export TITAN_RESULTS_DIR=$WORK/phase2_mla/results
  step phase2_gate 300 bash -c "set -o pipefail; python3 -m milestones.run phase2 | tee $WORK/phase2_mla/results/phase2_gate_$TAG.log"
  step milestone1 200 bash -c "set -o pipefail; python3 -m milestones.run milestone1 | tee $WORK/phase2_mla/results/milestone1_$TAG.log"
  mla_bench
fi

echo "== summary ($TAG)"
for k in "${!status[@]}"; do echo "  $k: exit ${status[$k]}"; done
(cd "$WORK" && find . -type f | sort)
mkdir -p "$OUT"
tar -C "$WORK" -czf "$OUT/results_${TAG}_$(echo "$parts" | tr ' ' '-').tgz" .
